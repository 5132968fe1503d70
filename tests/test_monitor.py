"""tasks/guard.py on a real host: the network check, its --fix, the deploy's own run at the
end, watchme-guard.timer (its flap limit, its pause while a deploy holds the lock), a network
repair killed in the middle and finished by the next guard or deploy run, and the seed's
crontab line replaced by the timer. Containers are busybox, attached to watchme-network with
the fixed IPs of a small registry (WATCHME_REGISTRY). Tests run in file order."""

from __future__ import annotations

import json
import shlex
import time

import pytest

from tests.conftest import assert_idempotent
from tests.guard_helpers import (MONITOR, NET, ROOT_DIR, SCRIPTS, apt_install, busybox_image,
                                 ensure_network, ip_of, monitor, run_container, sh, write_registry)

pytestmark = [pytest.mark.e2e, pytest.mark.provisioned]  # packages preinstalled

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
    assert any(c.startswith("Write the rendered files (one bundle upload)") for c in changed)  # the scripts
    assert "Enable and start watchme-guard.timer" in changed
    for script in ("docker_api.py", "network_monitor.py", "network_repair.py", "disk_guard.py",
                   "deploy_lock.py", "check-infrastructure.sh"):
        f = host.file(f"{SCRIPTS}/{script}")
        assert (f.user, f.mode) == ("root", 0o755)
    assert json.loads(host.file(f"{ROOT_DIR}/monitor/members.json").content_string) == {
        "network": {"name": NET, "subnet": "172.27.0.0/16", "gateway": "172.27.0.1"},
        "members": [{"service": s, "container": c, "ip": ip, "memory_limit": 16 << 20}
                    for s, c, ip in MEMBERS]}
    assert 'MONITOR_ARGS="--fix --flap-window 3600"\nDISK_ARGS="--threshold 85"\n' in \
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
        "state": "running", "status": "detached", "ip": None, "fixed": False, "flapping": False,
        "error": None, "memory_limit": 16 << 20, "memory": 16 << 20, "memory_ok": True,
        "oom_killed": False, "exit_code": 0}
    assert report["counts"] == {"ok": 2, "missing": 0, "stopped": 0, "detached": 1,
                                "wrong_ip": 0, "fixed": 0, "flapping": 0, "memory_mismatch": 0,
                                "oom_killed": 0}
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
    assert {k: report["members"][1][k] for k in ("status", "state", "ip", "fixed", "error")} == {
        "status": "stopped", "state": "exited", "ip": None, "fixed": False, "error": None}
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
    assert {k: report["members"][2][k] for k in ("status", "state", "ip", "memory")} == {
        "status": "missing", "state": None, "ip": None, "memory": None}
    assert report["counts"]["missing"] == 1 and report["counts"]["stopped"] == 1


def last_run_journal(host, last_line: str | None = None) -> str:
    """The journal of the guard service's last run only. journald stores a unit's output
    asynchronously: with last_line, wait (up to 10 s) until the run's last line is in."""
    invocation = sh(host, "systemctl show -p InvocationID --value watchme-guard.service").strip()
    deadline = time.monotonic() + 10
    while True:
        text = sh(host, f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={invocation}")
        if last_line is None or last_line in text or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


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


def test_memory_mismatch_and_oom_reported(services, host):
    run_container(host, "mon-c", "172.27.0.22", memory="32m")
    sh(host, "docker stop -t 0 mon-b >/dev/null")
    # A real OOM kill: the OOM killer SIGKILLs it (exit 137, OOMKilled).
    sh(host, "docker rm -f mon-b >/dev/null; docker run -d --name mon-b --network "
             f"{NET} --ip 172.27.0.21 --memory 8m --memory-swap 8m busybox:local busybox sh -c "
             "'a=x; while true; do a=$a$a; done' >/dev/null; "
             "for i in $(seq 60); do [ $(docker inspect -f '{{.State.Running}}' mon-b) = false ] "
             "&& break; sleep 0.5; done")
    rc, report = monitor(host)
    b, c = report["members"][1], report["members"][2]
    assert (c["memory"], c["memory_limit"], c["memory_ok"]) == (32 << 20, 16 << 20, False)
    assert (b["oom_killed"], b["exit_code"], b["memory"]) == (True, 137, 8 << 20)
    text = host.run(f"python3 {MONITOR}").stdout
    assert "  MEMORY    mon-c: limit 32m, registry memory_limit 16m" in text
    assert "  OOM       mon-b: killed (exit 137, OOM killer) with a limit of 8m" in text
    run_container(host, "mon-b", "172.27.0.21")
    run_container(host, "mon-c", "172.27.0.22")


def test_guard_refuses_a_second_reconnect_within_the_hour(services, host):
    """mon-a was reconnected by the deploy minutes ago: the timer's guard reports a flap."""
    sh(host, f"docker network disconnect {NET} mon-a")
    try:
        assert host.run("systemctl start watchme-guard.service").rc != 0
        journal = last_run_journal(host)
        assert "FLAPPING  mon-a (expected 172.27.0.20): running but not attached -> flapping: " \
               "already reconnected" in journal
        assert ip_of(host, "mon-a") == ""
    finally:
        assert monitor(host, "--fix")[0] == 2  # by hand, without the window: reconnected


def _hold_the_deploy_lock(host) -> str:
    """A live process as the lock's holder, the way watchme/lock.py writes it."""
    pid = sh(host, "setsid sleep 600 >/dev/null 2>&1 < /dev/null & echo $!").strip()
    start = sh(host, f"sed 's/.*) //' /proc/{pid}/stat | cut -d' ' -f20").strip()
    sh(host, f"mkdir -p /run/watchme && printf '%s %s\\n%s\\n' {pid} {start} "
             "'{\"by\": \"alice@laptop\"}' > /run/watchme/deploy.lock")
    return pid


def test_guard_does_nothing_while_a_deploy_holds_the_lock(services, host):
    pid = _hold_the_deploy_lock(host)
    sh(host, f"docker network disconnect {NET} mon-c")
    try:
        sh(host, "systemctl start watchme-guard.service")
        journal = last_run_journal(host, "guard skipped: a deploy is running")
        assert "a deploy holds /run/watchme/deploy.lock: alice@laptop" in journal
        assert "guard skipped: a deploy is running" in journal
        assert ip_of(host, "mon-c") == ""
    finally:
        sh(host, f"kill {pid}")
    # The holder is gone: the lock is stale, the guard acts.
    sh(host, "systemctl start watchme-guard.service")
    assert ip_of(host, "mon-c") == "172.27.0.22"
    sh(host, "rm -f /run/watchme/deploy.lock")


DRIFT = (f"for c in mon-a mon-b mon-c; do docker network disconnect {NET} $c; done; "
         f"docker network rm {NET} >/dev/null && docker network create --subnet 172.27.0.0/24 "
         f"--gateway 172.27.0.254 {NET} >/dev/null && "
         "docker network connect --ip 172.27.0.20 --alias api-a {NET} mon-a && "
         "docker network connect --ip 172.27.0.21 {NET} mon-b && "
         "docker network connect --ip 172.27.0.22 {NET} mon-c").replace("{NET}", NET)


def _repair_killed_after(host, writes: int) -> None:
    """Run the real repair on the host and SIGKILL it before its API write number `writes`."""
    killer = "\n".join([
        f"import os, signal, sys; sys.path.insert(0, {SCRIPTS!r})",
        "import docker_api, network_repair",
        "real, n = docker_api.Docker.request, [0]",
        "def request(self, method, path, body=None, timeout=None):",
        "    if method != 'GET':",
        f"        if n[0] == {writes}: os.kill(os.getpid(), signal.SIGKILL)",
        "        n[0] += 1",
        "    return real(self, method, path, body, timeout)",
        "docker_api.Docker.request = request",
        "sys.exit(network_repair.main(['--ensure', '--repair', '--name', 'watchme-network', "
        "'--driver', 'bridge', '--subnet', '172.27.0.0/16', '--gateway', '172.27.0.1']))"])
    sh(host, DRIFT)
    r = host.run(f"python3 -c {shlex.quote(killer)}")
    assert r.rc == 137, (r.rc, r.stdout, r.stderr)
    assert host.file("/var/lib/watchme/network-repair.json").exists


def _repaired(host) -> None:
    net = json.loads(sh(host, f"docker network inspect {NET}"))[0]
    assert net["IPAM"]["Config"] == [{"Subnet": "172.27.0.0/16", "Gateway": "172.27.0.1"}]
    assert [ip_of(host, c) for c in ("mon-a", "mon-b", "mon-c")] == \
        ["172.27.0.20", "172.27.0.21", "172.27.0.22"]
    aliases = sh(host, f"docker inspect -f '{{{{json (index .NetworkSettings.Networks "
                       f"\"{NET}\").Aliases}}}}' mon-a")
    assert "api-a" in json.loads(aliases)
    assert not host.file("/var/lib/watchme/network-repair.json").exists


def test_repair_killed_after_two_disconnects_is_finished_by_the_guard(services, host):
    _repair_killed_after(host, 2)
    assert ip_of(host, "mon-a") == "" and ip_of(host, "mon-c") == "172.27.0.22"
    host.run("systemctl start watchme-guard.service")
    assert "finished an interrupted network repair" in last_run_journal(host)
    _repaired(host)


def test_repair_killed_after_the_network_was_removed_is_finished_by_the_deploy(services, host,
                                                                               deploy, env):
    _repair_killed_after(host, 4)  # 3 disconnects and the rm: no watchme-network at all
    assert host.run(f"docker network inspect {NET}").rc != 0
    run = deploy(env=env)
    assert run.rc == 0, run.stderr[-3000:]
    assert "network: finishing the interrupted repair of watchme-network" in run.stderr
    _repaired(host)


SEED_CRON = "*/5 * * * * /home/ubuntu/watchme-server-configs/scripts/check-infrastructure.sh"


def test_seed_crontab_line_replaced_by_the_timer_in_one_run(services, host, deploy, env):
    apt_install(host, "cron")
    sh(host, "systemctl disable --now watchme-guard.timer")
    sh(host, f"(echo 'MAILTO=\"\"'; echo {json.dumps(SEED_CRON)}) | crontab -u ubuntu -")
    run = deploy(env=env)
    assert run.rc == 0, run.stderr[-3000:]
    changed = run.changed()
    assert changed.index("Remove the seed's guard crontab lines (backup first)") < \
        changed.index("Enable and start watchme-guard.timer")
    assert sh(host, "crontab -u ubuntu -l") == 'MAILTO=""\n'
    backups = [b for b in sh(host, f"ls {ROOT_DIR}/backups/").split() if "crontab" in b]
    assert len(backups) == 1 and backups[0].startswith("var_spool_cron_crontabs_ubuntu.backup.")
    assert SEED_CRON in host.file(f"{ROOT_DIR}/backups/{backups[0]}").content_string
    timer = host.service("watchme-guard.timer")
    assert timer.is_running and timer.is_enabled


def test_second_run_changes_nothing(services, deploy, env):
    assert_idempotent(deploy, env=env)
