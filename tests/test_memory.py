"""tasks/memory.py: the memory budget, as arithmetic and on a real 2 GiB test host."""

from __future__ import annotations

import pytest

from tasks.memory import budget
from tests import fake_services
from tests.conftest import assert_idempotent
from watchme.registry import load

ALPHA = {"name": "alpha", "container": "watchme-alpha", "ip": "172.27.0.6", "port": 8000,
         "memory_limit": "1g", "priority": 2}
BETA = {"name": "beta", "container": "watchme-beta", "ip": "172.27.0.7", "port": 8001,
        "memory_limit": "256m", "priority": 6}


@pytest.fixture(scope="module")
def registries(tmp_path_factory):
    d = tmp_path_factory.mktemp("registries")
    return {"fits": fake_services.registry(d / "fits.yaml", [ALPHA, BETA]),
            "huge": fake_services.registry(d / "huge.yaml", [{**ALPHA, "memory_limit": "2g"}, BETA])}


def test_budget_over_lists_services_by_memory_and_priority(registries):
    services = load(registries["fits"]).enabled_services
    level, msg = budget(services, reserve_mib=800, host_mib=2000, warn_share=0.8)
    assert level == "over"
    assert msg.splitlines()[:4] == [
        "memory budget exceeded: memory limits 1280 MiB + OS reserve 800 MiB = 2080 MiB of 2000 MiB (104%)",
        "    service  memory MiB  priority",
        "    alpha          1024         2",
        "    beta            256         6",
    ]
    assert "starting with the highest priority numbers (beta, alpha)" in msg


def test_budget_warns_above_the_share(registries):
    services = load(registries["fits"]).enabled_services
    assert budget(services, 300, 1900, 0.8)[0] == "warn"  # 1580 / 1900 = 83 %
    assert budget(services, 300, 4096, 0.8) == (
        "ok", "memory limits 1280 MiB + OS reserve 300 MiB = 1580 MiB of 4096 MiB (39%)")


def test_production_registry_fits_a_t4g_small():
    services = load().enabled_services
    level, msg = budget(services, 300, 1900, 0.8)
    assert level == "warn", msg  # the seed's host runs at its limit: a warning, not a refusal


# --- end to end: the check runs against the host's real memory (its cgroup limit here) ----

@pytest.mark.e2e
def test_over_budget_refused_before_any_change(deploy, host, registries):
    assert not host.package("nginx").is_installed, "the test host must start bare"
    # 1280 MiB of limits + 800 MiB reserved for the OS fit the registry's nominal check for a
    # bigger host (host_memory_mib), but not this 2 GiB host: the deploy reads the real memory.
    run = deploy("--data", "memory_os_reserve_mib=800", "--data", "host_memory_mib=4096",
                 env={"WATCHME_REGISTRY": registries["fits"]})
    assert run.rc != 0
    assert ("memory budget exceeded: memory limits 1280 MiB + OS reserve 800 MiB = 2080 MiB "
            "of 2048 MiB (102%)") in run.stderr
    assert "    alpha          1024         2" in run.stderr
    assert not host.package("nginx").is_installed, "changed the host"
    assert not host.file("/opt/watchme").exists, "changed the host"


@pytest.mark.e2e
def test_registry_beyond_any_t4g_small_refused_before_ssh(deploy, registries):
    run = deploy(env={"WATCHME_REGISTRY": registries["huge"]})
    assert run.rc != 0
    assert "services: memory limits of enabled services sum to 2304 MiB" in run.stderr
    assert "Connecting to hosts" not in run.stderr


@pytest.mark.e2e
def test_warning_above_80_percent_then_idempotent(deploy, registries):
    env = {"WATCHME_REGISTRY": registries["fits"]}
    run = deploy(env=env)  # 1580 / 2048 MiB = 77 %: no warning
    assert run.rc == 0, run.stderr[-3000:]
    assert "memory budget above" not in run.stderr
    run = deploy("--data", "memory_os_reserve_mib=500", env=env)  # 1780 / 2048 = 87 %
    assert run.rc == 0, run.stderr[-3000:]
    assert "memory budget above 80%: memory limits 1280 MiB + OS reserve 500 MiB = 1780 MiB of 2048 MiB (87%)" \
        in run.stderr
    assert_idempotent(deploy, env=env)
