"""watchme/network.py and watchme/units.py without a host, the way pyinfra tests its own
operations: canned facts in, the commands (or the noop) out."""

from __future__ import annotations

import base64
import json

import pytest
import yaml
from pyinfra.api.exceptions import OperationError
from pyinfra.context import ctx_host

from tests.host_scripts import network_repair
from tests.pyinfra_fake import FakeHost, run_op

from watchme.network import (ComposeFiles, DockerNetwork, audit_compose, docker_network,
                             migrate_compose)
from watchme.units import UnitFiles, ours

WANTED = {"network": "watchme-network", "driver": "bridge", "subnet": "172.27.0.0/16",
          "gateway": "172.27.0.1", "script": "/s/network_repair.py", "ip_range": "172.27.255.0/24"}
ENSURE = ("python3 /s/network_repair.py --ensure --name watchme-network --driver bridge "
          "--subnet 172.27.0.0/16 --gateway 172.27.0.1 --ip-range 172.27.255.0/24")
NO_RANGE = [("ip_range", "172.27.255.0/24", "(none)")]


def found(drift=(), journal=None, exists=True, containers=(), outdated=()):
    """DockerNetwork's value: network_repair.py --check --json (its report rendered by the
    script itself)."""
    state = {"exists": exists, "journal": journal, "drift": [list(d) for d in drift],
             "outdated": [list(d) for d in outdated],
             "network": {"name": "watchme-network", "driver": "bridge", "subnet": "172.27.0.0/16",
                         "gateway": "172.27.0.1", "ip_range": "" if outdated else "172.27.255.0/24",
                         "labels": {}} if exists else None,
             "containers": list(containers)}
    return {**state, "report": network_repair.report(state, {"name": "watchme-network"})}


@pytest.mark.parametrize("fact, repair, fixed, expect", [
    (None, False, {}, [ENSURE]),                                  # script not installed yet
    (found(exists=False), False, {}, [ENSURE]),                   # missing: created on the host
    (found(journal={"started": "x"}), False, {}, [ENSURE]),       # an interrupted repair
    (found(), False, {}, []),                                     # as wanted
    (found(outdated=NO_RANGE), False, {}, []),                    # no ip-range: works, reported
    (found(outdated=NO_RANGE), True, {"watchme-a": "172.27.0.6"},  # ... recreated when asked
     [ENSURE + " --repair --fixed-ip watchme-a=172.27.0.6"]),
    (found(drift=[("subnet", "172.27.0.0/16", "172.27.0.0/24")]), True,
     {"watchme-vault-api": "172.27.0.6", "a b": "172.27.0.7"},
     [ENSURE + " --repair --fixed-ip 'a b=172.27.0.7' --fixed-ip watchme-vault-api=172.27.0.6"]),
])
def test_network_op(fact, repair, fixed, expect):
    cmds, fake = run_op(docker_network, {DockerNetwork: fact}, **WANTED, repair=repair, fixed_ips=fixed)
    assert cmds == expect
    assert bool(fake.noops) == (expect == [])
    assert fake.asked == [("DockerNetwork", {k: v for k, v in WANTED.items() if k != "network"}
                             | {"network": "watchme-network"})]


@pytest.mark.parametrize("line", [
    "subnet   wanted 172.27.0.0/16    found 172.18.0.0/16",
])
def test_drift_without_repair_fails_with_the_diff(line):
    fact = found(drift=[("subnet", "172.27.0.0/16", "172.18.0.0/16")], containers=[
        {"name": "api-transcriber", "ip": "172.18.0.3", "aliases": ["transcriber"], "running": True}])
    with pytest.raises(OperationError) as e:
        run_op(docker_network, {DockerNetwork: fact}, **WANTED)
    msg = str(e.value)
    assert line in msg
    assert "api-transcriber              172.18.0.3 aliases transcriber" in msg
    assert "network_repair=true" in msg


def test_outdated_network_is_a_noop_that_says_so():
    _, fake = run_op(docker_network, {DockerNetwork: found(outdated=NO_RANGE)}, **WANTED)
    assert fake.noops == ["network watchme-network: bridge 172.27.0.0/16 gateway 172.27.0.1 "
                          "(outdated: ip_range (none), wanted 172.27.255.0/24)"]


def test_network_fact_reads_the_script():
    fact = DockerNetwork()
    assert fact.process([]) is None  # not installed
    assert fact.process(json.dumps(found()).splitlines()) == found()
    assert fact.process(['{"exit_code": 3, "error": "Docker is not answering"}'])["exists"] is False
    old = {k: v for k, v in found().items() if k != "report"}
    assert fact.process(json.dumps(old).splitlines()) is None  # older script: --ensure decides
    assert fact.command("/s/network_repair.py", "watchme-network", "bridge", "172.27.0.0/16",
                        "172.27.0.1", ip_range="172.27.255.0/24").endswith(
        ENSURE.replace("--ensure", "--check --json").removeprefix("python3 ") + " || true; fi")


def test_compose_files_fact():
    text = "services: {}\n"
    b64 = base64.b64encode(text.encode()).decode()
    out = ComposeFiles().process(["@@file ubuntu ubuntu 644 /a/b.yml", b64, "@@missing /c/d.yml"])
    assert out == {"/a/b.yml": {"user": "ubuntu", "group": "ubuntu", "mode": "644", "text": text},
                   "/c/d.yml": None}


# --- compose audit and migration ---------------------------------------------------------

SEED_BUG = """version: '3.8'

services:
  api:
    image: whisper:latest   # the seed's api_whisper_v1
    networks:
      - watchme-network

networks:
  watchme-network:
    driver: bridge  # the seed's mistake

volumes:
  models: {}
"""


def test_audit_reports_driver_bridge():
    assert audit_compose(SEED_BUG, "watchme-network", "172.27.0.0/16") == [
        ("watchme-network", "networks.watchme-network has driver: bridge: compose creates a network "
                            "of its own instead of joining watchme-network; use external: true")]


@pytest.mark.parametrize("text", [
    "networks:\n  watchme-network:\n    external: true\n",
    "networks:\n  watchme-network:\n    external:\n      name: watchme-network\n",
    "networks:\n  wn:\n    name: watchme-network\n    external: true\n",
    "networks:\n  other:\n    driver: bridge\n",
    "services:\n  a:\n    image: x\n",
])
def test_audit_accepts_external_and_unrelated(text):
    assert audit_compose(text, "watchme-network", "172.27.0.0/16") == []


def test_audit_reports_another_subnet_and_a_renamed_entry():
    text = ("networks:\n  shared:\n    name: watchme-network\n    ipam:\n      config:\n"
            "        - subnet: 172.20.0.0/16\n")
    problems = audit_compose(text, "watchme-network", "172.27.0.0/16")
    assert [k for k, _ in problems] == ["shared", "shared"]
    assert "networks.shared asks for subnet 172.20.0.0/16, not 172.27.0.0/16" == problems[1][1]


def test_audit_reports_bad_yaml():
    assert audit_compose("a: [", "watchme-network", "x")[0][1].startswith("not valid YAML")


def test_migrate_changes_only_the_network_entry():
    new = migrate_compose(SEED_BUG, ["watchme-network"])
    assert new == SEED_BUG.replace("    driver: bridge  # the seed's mistake\n", "    external: true\n")


def test_migrate_keeps_the_name_and_drops_ipam():
    text = ("services:\n  a:\n    image: x\nnetworks:\n  shared:\n    name: watchme-network\n"
            "    driver: bridge\n    ipam:\n      config:\n        - subnet: 172.20.0.0/16\n"
            "  other:\n    driver: bridge\n")
    new = migrate_compose(text, ["shared"])
    assert new == ("services:\n  a:\n    image: x\nnetworks:\n  shared:\n    name: watchme-network\n"
                   "    external: true\n  other:\n    driver: bridge\n")


def test_migrate_inline_entry_without_trailing_newline():
    new = migrate_compose("networks:\n  watchme-network: {driver: bridge}", ["watchme-network"])
    assert new == "networks:\n  watchme-network:\n    external: true"
    assert yaml.safe_load(new) == {"networks": {"watchme-network": {"external": True}}}


def test_migrate_refuses_flow_style_networks():
    with pytest.raises(ValueError, match="block-style"):
        migrate_compose("networks: {watchme-network: {driver: bridge}}\n", ["watchme-network"])


# --- unit files --------------------------------------------------------------------------

def test_ours_finds_links_into_the_config_root():
    units = UnitFiles().process(["link alpha.service /cfg/systemd/alpha.service",
                                 "link sshd.service /lib/systemd/system/ssh.service",
                                 "file hand.service", "link x.service /cfg/systemd-old/x.service"])
    assert units["hand.service"] is None
    assert ours(units, "/cfg/systemd") == ["alpha.service"]


def test_infrastructure_unit_runs_the_same_ensure():
    from watchme.network import create_command
    with ctx_host.use(FakeHost({}, {"config_root": "/opt/watchme"})):
        assert create_command("watchme-network", "bridge", "172.27.0.0/16", "172.27.0.1",
                              ip_range="172.27.255.0/24") == (
            "/usr/bin/python3 /opt/watchme/scripts/network_repair.py --ensure --name "
            "watchme-network --driver bridge --subnet 172.27.0.0/16 --gateway 172.27.0.1 "
            "--ip-range 172.27.255.0/24")
