"""tasks/monitor.py on a real host: the network monitor, its --fix, the deploy's own run at
the end, and watchme-guard.timer. Containers are busybox, attached to watchme-network with
the fixed IPs of a small registry (WATCHME_REGISTRY). Tests run in file order."""

from __future__ import annotations

import json

import pytest

from tests.conftest import assert_idempotent
from tests.guard_helpers import (MONITOR, NET, ROOT_DIR, busybox_image, ensure_network, ip_of,
                                 monitor, run_container, sh, write_registry)

pytestmark = pytest.mark.e2e

MEMBERS = [("svc-a", "mon-a", "172.27.0.20"), ("svc-b", "mon-b", "172.27.0.21"),
           ("svc-c", "mon-c", "172.27.0.22")]
CHECK_OP = "Network monitor --fix (watchme-network members)"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return write_registry(tmp_path_factory.mktemp("registry") / "services.yaml", MEMBERS)


@pytest.fixture(scope="module")
def first_run(deploy, env):
    run = deploy(env=env)
    assert run.rc == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def services(first_run, host):
    busybox_image(host)
    ensure_network(host)
    for _, container, ip in MEMBERS:
        run_container(host, container, ip)


def test_first_run_installs_the_guard(first_run, host):
    changed = first_run.changed()
    assert f"Install {MONITOR}" in changed
    assert "Enable and start watchme-guard.timer" in changed
    for script in (MONITOR, f"{ROOT_DIR}/scripts/check-infrastructure.sh"):
        f = host.file(script)
        assert (f.user, f.mode) == ("root", 0o755)
    assert json.loads(host.file(f"{ROOT_DIR}/monitor/members.json").content_string) == {
        "network": {"name": NET, "subnet": "172.27.0.0/16", "gateway": "172.27.0.1"},
        "members": [{"service": s, "container": c, "ip": ip} for s, c, ip in MEMBERS]}
    assert 'MONITOR_ARGS="--fix"\nDISK_ARGS="--threshold 85"\n' in \
        host.file(f"{ROOT_DIR}/monitor/guard.env").content_string
    assert host.file("/etc/systemd/system/watchme-guard.timer").linked_to == \
        f"{ROOT_DIR}/monitor/watchme-guard.timer"


def test_new_server_missing_containers_are_warnings(first_run):
    """No service runs yet on a new server: the deploy warns and succeeds."""
    for _, container, ip in MEMBERS:
        assert f"network monitor: warning: {container} ({ip}) is missing; its unit starts it" \
            in first_run.stderr


def test_healthy(services, host):
    rc, report = monitor(host)
    assert (rc, report["status"]) == (0, "healthy")
    assert [m["status"] for m in report["members"]] == ["ok", "ok", "ok"]


def test_detached_container_reported_with_exact_fields(services, host):
    sh(host, f"docker network disconnect {NET} mon-a")
    rc, report = monitor(host)
    assert rc == 1
    assert report["members"][0] == {
        "service": "svc-a", "container": "mon-a", "expected_ip": "172.27.0.20",
        "state": "running", "status": "detached", "ip": None, "fixed": False, "error": None}
    assert report["counts"] == {"ok": 2, "missing": 0, "stopped": 0, "detached": 1,
                                "wrong_ip": 0, "fixed": 0}
    assert (report["status"], report["exit_code"], report["fix"]) == ("problems", 1, False)
    assert report["network"] == {"name": NET, "subnet": "172.27.0.0/16", "gateway": "172.27.0.1",
                                 "exists": True, "found_subnet": "172.27.0.0/16",
                                 "found_gateway": "172.27.0.1", "ok": True}
    assert ip_of(host, "mon-a") == ""  # reporting changed nothing


def test_fix_reconnects_with_the_old_ip_and_next_run_is_healthy(services, host):
    rc, report = monitor(host, "--fix")
    assert (rc, report["status"]) == (2, "fixed")
    assert report["members"][0]["fixed"] is True
    assert ip_of(host, "mon-a") == "172.27.0.20"
    assert monitor(host)[0] == 0


def test_wrong_ip_moved_back_keeping_aliases(services, host):
    sh(host, f"docker network disconnect {NET} mon-b && "
             f"docker network connect --ip 172.27.0.99 --alias api-b {NET} mon-b")
    rc, report = monitor(host, "--fix")
    assert rc == 2
    assert {k: report["members"][1][k] for k in ("status", "ip", "fixed")} == {
        "status": "wrong_ip", "ip": "172.27.0.99", "fixed": True}
    assert ip_of(host, "mon-b") == "172.27.0.21"
    aliases = sh(host, f"docker inspect -f '{{{{json (index .NetworkSettings.Networks "
                       f"\"{NET}\").Aliases}}}}' mon-b")
    assert "api-b" in json.loads(aliases)


def test_deploy_reconnects_and_prints_the_report(services, host, deploy, env):
    sh(host, f"docker network disconnect {NET} mon-a")
    run = deploy(env=env)
    assert run.rc == 0, run.stderr[-3000:]
    assert CHECK_OP in run.changed()
    assert "network monitor: mon-a was not attached; reconnected at 172.27.0.20" in run.stderr
    assert f"network monitor: {NET}: 3 ok (1 reconnected)\n" in run.stderr
    assert ip_of(host, "mon-a") == "172.27.0.20"


def test_deploy_fails_when_a_running_container_stays_off_the_network(services, host, deploy, env):
    """Another container took mon-a's address: --fix cannot reconnect it, the deploy fails."""
    sh(host, f"docker network disconnect {NET} mon-a")
    run_container(host, "intruder", "172.27.0.20")
    try:
        run = deploy(env=env)
        assert run.rc != 0
        assert ("network monitor: mon-a is running but not attached (wanted 172.27.0.20 on "
                f"{NET}): ") in run.stderr
    finally:
        sh(host, "docker rm -f intruder >/dev/null")
    assert monitor(host, "--fix")[0] == 2


def test_stopped_container_reported_and_left_stopped(services, host, deploy, env):
    sh(host, "docker stop -t 0 mon-b >/dev/null")
    rc, report = monitor(host, "--fix")
    assert rc == 1
    assert report["members"][1] == {
        "service": "svc-b", "container": "mon-b", "expected_ip": "172.27.0.21",
        "state": "exited", "status": "stopped", "ip": None, "fixed": False, "error": None}
    assert sh(host, "docker inspect -f '{{.State.Status}}' mon-b").strip() == "exited"
    # For the deploy it is a warning, and nothing to change: the run stays a no-op.
    run = deploy(env=env)
    assert run.rc == 0, run.stderr[-3000:]
    assert "network monitor: warning: mon-b (172.27.0.21) is stopped (exited); its unit starts it" \
        in run.stderr
    assert run.changed() == []
    assert sh(host, "docker inspect -f '{{.State.Status}}' mon-b").strip() == "exited"


def test_missing_container_reported(services, host):
    sh(host, "docker rm -f mon-c >/dev/null")
    rc, report = monitor(host)
    assert rc == 1
    assert report["members"][2] == {
        "service": "svc-c", "container": "mon-c", "expected_ip": "172.27.0.22",
        "state": None, "status": "missing", "ip": None, "fixed": False, "error": None}
    assert report["counts"]["missing"] == 1 and report["counts"]["stopped"] == 1


def last_run_journal(host) -> str:
    """The journal of the guard service's last run only."""
    invocation = sh(host, "systemctl show -p InvocationID --value watchme-guard.service").strip()
    return sh(host, f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={invocation}")


def test_timer_active_and_last_run_succeeded_in_the_journal(services, host):
    sh(host, "docker start mon-b >/dev/null")
    run_container(host, "mon-c", "172.27.0.22")
    timer = host.service("watchme-guard.timer")
    assert timer.is_running and timer.is_enabled
    assert "watchme-guard.service" in sh(host, "systemctl list-timers --all --no-pager")
    sh(host, "systemctl start watchme-guard.service")
    show = sh(host, "systemctl show watchme-guard.service -p Result -p ExecMainStatus")
    assert "Result=success" in show and "ExecMainStatus=0" in show
    journal = last_run_journal(host)
    assert "3 members: 3 ok -> healthy (exit 0)" in journal
    assert "disk: " in journal and "(threshold 85%): nothing to prune" in journal


def test_failing_check_fails_the_unit(services, host):
    sh(host, "docker stop -t 0 mon-b >/dev/null")
    try:
        assert host.run("systemctl start watchme-guard.service").rc != 0
        assert "watchme-guard.service" in sh(host, "systemctl --failed --no-legend --no-pager")
        journal = last_run_journal(host)
        assert "STOPPED   mon-b (expected 172.27.0.21): not running (exited)" in journal
        assert "disk: " in journal  # the disk guard still ran after the failing network check
    finally:
        sh(host, "docker start mon-b >/dev/null")
    sh(host, "systemctl start watchme-guard.service")
    assert "watchme-guard.service" not in sh(host, "systemctl --failed --no-legend --no-pager")


def test_operator_habit_check_infrastructure_sh(services, host):
    """The seed's commands still work as the ubuntu user (docker group)."""
    r = host.run(f"sudo -u ubuntu sh -c 'bash {ROOT_DIR}/scripts/check-infrastructure.sh'")
    assert r.rc == 0, r.stdout + r.stderr
    assert "3 members: 3 ok -> healthy (exit 0)" in r.stdout


def test_second_run_changes_nothing(services, deploy, env):
    assert_idempotent(deploy, env=env)
