"""tasks/disk.py and disk_guard.py on a real host: prune only at the threshold; volumes,
watchme-network, a registry service's stopped container and any container stopped less than
10 minutes ago always kept. The threshold is moved around the host's real usage with --data."""

from __future__ import annotations

import pytest

from tests.conftest import assert_idempotent
from tests.guard_helpers import (DISK_GUARD, NET, ROOT_DIR, busybox_image, ensure_network,
                                 run_container, sh, write_registry)

pytestmark = [pytest.mark.e2e, pytest.mark.provisioned]  # packages preinstalled


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return write_registry(tmp_path_factory.mktemp("registry") / "services.yaml",
                          [("svc-d", "disk-member", "172.27.0.40")])


@pytest.fixture(scope="module")
def first_run(deploy, env):
    run = deploy(env=env)
    assert run.rc == 0, run.stderr[-3000:]
    return run


@pytest.fixture
def garbage(first_run, host):
    """What a prune may take (a stopped container, a dangling image) next to what it must
    keep: a named volume with a file, a stopped container's volume, the registry service's
    stopped container, and watchme-network with no running container on it (`docker system
    prune` would delete that network)."""
    busybox_image(host)
    ensure_network(host)
    run_container(host, "disk-member", "172.27.0.40")
    sh(host, "docker stop -t 0 disk-member >/dev/null")
    sh(host, "docker volume create keep-data >/dev/null && docker run --rm -v keep-data:/d "
             "busybox:local sh -c 'echo precious > /d/file'")
    run_container(host, "victim", "172.27.0.41", extra="-v victim-data:/d")
    sh(host, "docker exec victim sh -c 'echo mine > /d/file' && docker stop -t 0 victim >/dev/null")
    # The same tag imported twice: the first image is left dangling.
    sh(host, "for i in 1 2; do tar -C /tmp/bbroot -c bin/busybox | "
             "docker import -m $i - junk:old >/dev/null; done")
    assert "<none>" in sh(host, "docker images --filter dangling=true --format '{{.Repository}}'")


def _usage(host) -> int:
    return int(sh(host, "df -P /var/lib/docker | awk 'NR==2 {print $5}'").strip().rstrip("%"))


def test_above_usage_threshold_nothing_runs(garbage, host, deploy, env):
    """The default threshold (85 %) is above this host's usage: a no-op deploy."""
    if _usage(host) >= 85:
        pytest.skip(f"this machine's disk is {_usage(host)}% full, above the default threshold")
    run = deploy(env=env)
    assert run.rc == 0, run.stderr[-3000:]
    assert run.changed() == []
    assert run.totals["success"] == 0
    (op,) = [o for o in run.json["results"]["operations"] if o["name"].startswith("Docker disk")]
    assert op["name"] == "Docker disk guard (prune at 85% used)"
    assert (op["success"], len(op["no_change"])) == ([], 1)
    assert sh(host, "docker inspect -f '{{.State.Status}}' victim").strip() == "exited"
    assert sh(host, "docker images -q --filter dangling=true").strip()


def test_below_usage_threshold_prunes_but_keeps_volumes_and_network(garbage, host, deploy, env):
    run = deploy("--data", "disk_prune_threshold=1", env=env)
    assert run.rc == 0, run.stderr[-3000:]
    # The threshold is data: the timer's guard.env follows it; and the network monitor runs
    # again after any change of the deploy (watchme/network_check.py).
    assert run.changed() == ["Write the rendered files (one bundle upload): guard.env",
                             "Docker disk guard (prune at 1% used)",
                             "Network monitor --fix (watchme-network members)"]
    assert "(threshold 1%): pruned, reclaimed containers " in run.stderr
    # Stopped seconds ago: kept (its unit may be restarting it, someone may read its logs).
    assert "victim (stopped less than 10 min ago)" in run.stderr
    assert "disk-member (a registry service's container)" in run.stderr
    assert sh(host, "docker inspect -f '{{.State.Status}}' victim").strip() == "exited"
    assert not sh(host, "docker images -q --filter dangling=true").strip()
    for volume, content in (("keep-data", "precious"), ("victim-data", "mine")):
        assert sh(host, f"docker run --rm -v {volume}:/d busybox:local cat /d/file").strip() == content
    assert host.run(f"docker network inspect {NET}").rc == 0
    assert sh(host, "docker image inspect -f '{{.Id}}' busybox:local")  # in use: kept


def test_guard_on_the_host_follows_the_same_rule(garbage, host):
    assert not sh(host, f"docker ps -q --filter network={NET}").strip(), \
        "a running container on the network would hide a network prune"
    low = host.run(f"python3 {DISK_GUARD} --threshold 100")
    assert low.rc == 0 and "nothing to prune" in low.stdout
    assert sh(host, "docker inspect -f '{{.State.Status}}' victim").strip() == "exited"
    check = host.run(f"python3 {DISK_GUARD} --check --threshold 1 --min-age 0")
    assert check.rc == 1 and host.run("docker inspect victim").rc == 0, "--check pruned"
    # --min-age 0 stands in for the 10 minutes: victim is old enough, disk-member never is.
    high = host.run(f"python3 {DISK_GUARD} --threshold 1 --min-age 0")
    # Pruned, but the disk is still above 1 %: the guard fails so the timer's unit shows it.
    assert high.rc == 1, high.stdout + high.stderr
    assert "(threshold 1%): pruned, reclaimed containers" in high.stdout
    assert "removed victim" in high.stdout and "still" in high.stdout
    assert host.run("docker inspect victim").rc != 0
    assert sh(host, "docker inspect -f '{{.State.Status}}' disk-member").strip() == "exited"
    for volume, content in (("keep-data", "precious"), ("victim-data", "mine")):
        assert sh(host, f"docker run --rm -v {volume}:/d busybox:local cat /d/file").strip() == content
    assert host.run(f"docker network inspect {NET}").rc == 0


# The settings model (watchme/settings.py) refuses these while the inventory loads.
@pytest.mark.parametrize("arg, message", [
    ("disk_prune_threshold=150", "settings.disk_prune_threshold: Input should be less than or "
                                 "equal to 100 (got 150); fix it in group_data/ or with --data"),
    ("prune_volumes=yes", "settings.prune_volumes: Input should be a valid boolean (got 'yes')"),
])
def test_bad_data_refused_before_any_change(first_run, host, deploy, env, arg, message):
    sh(host, f"rm -f {ROOT_DIR}/monitor/guard.env")
    try:
        run = deploy("--data", arg, env=env)
        assert run.rc != 0
        assert message in run.stderr
        assert not host.file(f"{ROOT_DIR}/monitor/guard.env").exists
    finally:
        assert deploy(env=env).rc == 0


def test_second_run_changes_nothing(first_run, deploy, env):
    assert_idempotent(deploy, env=env)
