"""Unit tests of the deploy's guard side the way pyinfra tests its own operations (facts in,
commands or noop out): the disk prune, the end-of-deploy network check, the crontab removal,
the guard task's data and templates. The host scripts: test_host_scripts.py; end to end:
test_monitor.py, test_disk.py."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
from pyinfra.api import FunctionCommand
from pyinfra.api.exceptions import DeployError
from pyinfra.context import ctx_host, ctx_inventory

from tests.pyinfra_fake import FakeHost, run_op

from watchme import cron, disk
from watchme import network_check as monitor
from watchme.registry import load_data

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ deploy operations

def _state(ops_change=0, executing=False, done=()):
    """pyinfra's State as network_check reads it: the earlier operations' meta."""
    meta = lambda changed: SimpleNamespace(is_complete=lambda: True, did_change=lambda: changed)
    ops = {f"op{i}": SimpleNamespace(operation_meta=meta(c)) for i, c in enumerate(done)}
    return SimpleNamespace(is_executing=executing,
                           get_meta_for_host=lambda h: SimpleNamespace(ops_change=ops_change),
                           ops=defaultdict(lambda: ops))  # state.ops[host]


USAGE = {"root": "/var/lib/docker", "percent": 50, "threshold": 85, "pruned": False}
PRUNE = {"script": "/s/disk_guard.py", "members": "/m/members.json"}


def test_disk_fact_reads_the_guards_check():
    fact = disk.DockerDiskUsage()
    assert fact.process(json.dumps(USAGE).splitlines()) == USAGE
    assert fact.process([]) is None  # not installed yet
    assert fact.process([json.dumps({**USAGE, "percent": None, "exit_code": 3})]) is None
    assert fact.command("/s/disk_guard.py", 85).endswith(
        "python3 /s/disk_guard.py --check --json --threshold 85 || true; fi")  # exit 1 is an answer


@pytest.mark.parametrize("usage, threshold, noop", [
    (None, 85, "disk: the disk guard cannot look yet (new host); the timer's guard will"),
    (USAGE, 51, "disk: 50% of /var/lib/docker used, below the 51% threshold; nothing to prune"),
])
def test_disk_op_noop_below_threshold(usage, threshold, noop):
    commands, fake = run_op(disk.docker_prune, {disk.DockerDiskUsage: usage},
                            threshold=threshold, **PRUNE)
    assert commands == []
    assert fake.noops == [noop]


@pytest.mark.parametrize("all_images, volumes, command", [
    (False, False, "python3 /s/disk_guard.py --json --threshold 50 --members /m/members.json"),
    (True, False, "python3 /s/disk_guard.py --json --threshold 50 --members /m/members.json --all-images"),
    (False, True, "python3 /s/disk_guard.py --json --threshold 50 --members /m/members.json --volumes"),
])
def test_disk_op_runs_the_guard_at_threshold(all_images, volumes, command):
    (cmd,), fake = run_op(disk.docker_prune, {disk.DockerDiskUsage: USAGE}, threshold=50,
                          all_images=all_images, volumes=volumes, **PRUNE)
    assert isinstance(cmd, FunctionCommand) and cmd.args == (command,)
    assert fake.noops == []


@pytest.mark.parametrize("answer, ok, line", [
    ({"percent": 90, "root": "/d", "threshold": 85, "reclaimed": {"containers": 5_000_000},
      "percent_after": 80, "removed": ["junk"], "kept": [["svc", "a registry service's container"]],
      "exit_code": 0, "error": None},
     True, "disk: 90% of /d used (threshold 85%): pruned, reclaimed containers 5MB; now 80%; "
           "removed junk; kept svc (a registry service's container)"),
    ({"percent": 90, "root": "/d", "threshold": 85, "reclaimed": {}, "percent_after": 90,
      "removed": [], "kept": [], "exit_code": 1, "error": "still 90% used after pruning"},
     True, "disk: 90% of /d used (threshold 85%): pruned, reclaimed nothing; now 90%; "
           "still 90% used after pruning"),
    ({"percent": 90, "root": "/d", "threshold": 85, "reclaimed": {}, "percent_after": 90,
      "removed": [], "kept": [], "exit_code": 1, "error": "prune failed: images: busy"},
     False, None),
])
def test_disk_outcome(answer, ok, line):
    got_ok, got_line = disk.outcome(json.dumps(answer).splitlines())
    assert got_ok == ok
    if line:
        assert got_line == line


def _report(*members, network_ok=True, status="healthy"):
    return {"exit": 0, "output": [], "report": {
        "status": status, "error": None,
        "network": {"name": "watchme-network", "ok": network_ok, "exists": network_ok,
                    "subnet": "172.27.0.0/16", "gateway": "172.27.0.1",
                    "found_subnet": None, "found_gateway": None},
        "members": [{"container": c, "expected_ip": "172.27.0.20", "state": st, "status": s,
                     "ip": None, "fixed": f, "error": None, "flapping": False,
                     "memory_limit": None, "memory": 0, "memory_ok": None, "oom_killed": False,
                     "exit_code": 0} for c, st, s, f in members],
        "counts": {"ok": sum(1 for m in members if m[2] == "ok")}}}


OK_A = ("a", "running", "ok", False)
STOPPED_B = ("b", "exited", "stopped", False)
DETACHED_C = ("c", "running", "detached", False)
ARGS = {"script": "/s/network_monitor.py", "members": "/m/members.json"}


@pytest.mark.parametrize("first, ops_change, executing, done, runs", [
    (_report(OK_A), 0, False, (), False),                   # healthy, nothing else changes
    (_report(OK_A, STOPPED_B), 0, True, (False,), False),   # stopped is a warning: no change
    (_report(OK_A, DETACHED_C), 0, False, (), True),        # something to fix
    (None, 0, False, (), True),                             # monitor not installed yet
    (_report(OK_A), 3, False, (), True),                    # earlier ops may change (preparing)
    (_report(OK_A), 3, True, (False, False), False),        # ... but none did (executing)
    (_report(OK_A), 0, True, (False, True), True),          # one did
    (_report(("a", "exited", "stopped", False), network_ok=False), 0, False, (), False),
])
def test_monitor_op_runs_only_when_it_can_matter(first, ops_change, executing, done, runs):
    commands, fake = run_op(monitor.network_check, {monitor.NetworkReport: first},
                            state=_state(ops_change, executing, done), **ARGS)
    assert bool(commands) == runs
    if runs:
        assert isinstance(commands[0], FunctionCommand) and commands[0].args == (
            ARGS["script"], ARGS["members"], True)
    else:
        assert fake.noops and fake.noops[0].startswith("network monitor: watchme-network:")


def test_monitor_verdict_warns_for_memory_and_oom():
    report = _report(OK_A, ("t", "exited", "stopped", False))
    report["report"]["members"][0].update(memory=512 << 20, memory_limit=1 << 30, memory_ok=False)
    report["report"]["members"][1].update(memory=1 << 30, oom_killed=True, exit_code=137)
    assert monitor.verdict(report) == ([], [
        "a runs with a memory limit of 512m, the registry says 1g",
        "t (172.27.0.20) is stopped (exited); its unit starts it",
        "t was killed (exit 137: the OOM killer, or a SIGKILL) with a memory limit of 1g"])


def test_monitor_verdict_fails_only_for_running_containers_left_off():
    assert monitor.verdict(_report(OK_A, STOPPED_B)) == (
        [], ["b (172.27.0.20) is stopped (exited); its unit starts it"])
    assert monitor.verdict(_report(("c", "running", "detached", True))) == ([], [])
    errors, _ = monitor.verdict(_report(DETACHED_C))
    assert errors == ["c is running but not attached (wanted 172.27.0.20 on watchme-network)"]
    errors, _ = monitor.verdict({"exit": 3, "output": [], "report": {
        "status": "unchecked", "error": "Docker is not answering"}})
    assert errors == ["network monitor could not check: Docker is not answering"]
    assert monitor.verdict(None)[0]


def test_monitor_command_and_parse():
    cmd = monitor.monitor_command("/s/nm.py", "/m/x.json", fix=True)
    assert "python3 /s/nm.py --json --members /m/x.json --fix" in cmd
    assert "--members /m/x.json --check 2>&1" in monitor.monitor_command("/s/nm.py", "/m/x.json", fix=False)
    assert monitor.parse(['{"status": "healthy"}', "@@exit=0"]) == {
        "exit": 0, "report": {"status": "healthy"}, "output": ['{"status": "healthy"}']}
    assert monitor.parse([]) is None  # not installed yet


# ------------------------------------------------------------------ tasks: data and rendering

REGISTRY = load_data({"services": [
    {"name": "svc-a", "description": "a", "container": "mon-a", "ip": "172.27.0.20", "port": 8060,
     "public_path": "/a/", "upstream_path": "/", "memory_limit": "16m", "priority": 1,
     "compose_file": "/x/a.yml"},
    {"name": "svc-b", "description": "b", "container": "mon-b", "ip": None, "port": 8061,
     "public_path": "/b/", "upstream_path": "/", "memory_limit": "16m", "priority": 2,
     "compose_file": "/x/b.yml"},
    {"name": "svc-c", "description": "c", "container": "mon-c", "ip": "172.27.0.22", "port": 8062,
     "public_path": "/c/", "upstream_path": "/", "memory_limit": "16m", "priority": 3,
     "compose_file": "/x/c.yml", "enabled": False},
]})
DATA = {"monitor_fix": True, "disk_prune_threshold": 85, "prune_all_images": False,
        "prune_volumes": False, "guard_interval": "5min", "registry": REGISTRY,
        "network_name": "watchme-network", "network_subnet": "172.27.0.0/16",
        "network_gateway": "172.27.0.1"}


def test_members_are_enabled_services_with_ip_and_memory_bytes():
    from tasks import guard as task
    fake = FakeHost({}, DATA)
    with ctx_host.use(fake), ctx_inventory.use([fake]):  # one host: it runs every service
        assert task.members() == {
            "network": {"name": "watchme-network", "subnet": "172.27.0.0/16",
                        "gateway": "172.27.0.1"},
            "members": [{"service": "svc-a", "container": "mon-a", "ip": "172.27.0.20",
                         "memory_limit": 16 << 20},
                        {"service": "svc-b", "container": "mon-b", "ip": None,
                         "memory_limit": 16 << 20}]}


@pytest.mark.parametrize("key, value, message", [
    ("disk_prune_threshold", 150, "disk_prune_threshold: 150 is not a percentage; fix: an "
                                  "integer from 1 to 100 (default 85)"),
    ("disk_prune_threshold", "85", "disk_prune_threshold: '85' is not a percentage"),
    ("prune_volumes", "yes", "prune_volumes: 'yes' is not true or false; fix: set "
                             "prune_volumes to True or False in group_data"),
    ("guard_interval", "every 5", "guard_interval: 'every 5' is not a systemd time span"),
])
def test_bad_data_is_refused_with_key_and_fix(key, value, message):
    from tasks import guard as task
    with ctx_host.use(FakeHost({}, {**DATA, key: value})):
        with pytest.raises(DeployError, match=message.replace("(", r"\(").replace(")", r"\)")):
            task.check_data()


def _render(name, **data):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(name).render(**data)


def test_guard_env_and_units_render_from_data():
    env = _render("guard.env.j2", monitor_fix=True, disk_prune_threshold=90,
                  prune_all_images=True, prune_volumes=False, flap_window=3600)
    assert 'MONITOR_ARGS="--fix --flap-window 3600"\nDISK_ARGS="--threshold 90 --all-images"\n' in env
    timer = _render("watchme-guard.timer.j2", guard_interval="5min")
    assert "OnUnitActiveSec=5min\n" in timer and "WantedBy=timers.target" in timer
    service = _render("watchme-guard.service.j2", scripts_dir="/r/scripts", monitor_fix=False)
    assert "ExecStart=/bin/sh /r/scripts/check-infrastructure.sh\n" in service
    assert "Type=oneshot" in service
    with pytest.raises(jinja2.UndefinedError):
        _render("watchme-guard.timer.j2")


# ------------------------------------------------------------------ the seed's crontab line

SEED_LINE = "*/5 * * * * /home/ubuntu/watchme-server-configs/scripts/check-infrastructure.sh"


def test_cron_fact_finds_the_guard_lines_per_user():
    fact = cron.GuardCronLines()
    assert fact.process([f"ubuntu {SEED_LINE}"]) == {"ubuntu": [SEED_LINE]}
    assert fact.process([]) == {}
    assert "crontab -u ubuntu -l" in fact.command(("ubuntu", "root"))


def test_cron_op_backs_up_then_removes_only_where_found():
    commands, _ = run_op(cron.remove_guard_cron_lines, {cron.GuardCronLines: {"ubuntu": [SEED_LINE]}},
                         backup_dir="/opt/watchme/backups")
    assert commands == [
        "mkdir -p /opt/watchme/backups && crontab -u ubuntu -l > "
        "/opt/watchme/backups/var_spool_cron_crontabs_ubuntu.backup.$(date +%Y%m%d_%H%M%S)",
        "crontab -u ubuntu -l | { grep -vE '(check-infrastructure\\.sh|network_monitor\\.py)' "
        "|| true; } | crontab -u ubuntu -"]
    commands, fake = run_op(cron.remove_guard_cron_lines, {cron.GuardCronLines: {}}, backup_dir="/b")
    assert commands == []
    assert fake.noops == ["no crontab line runs the old guard"]
