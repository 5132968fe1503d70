"""Unit tests of the host scripts (files/*.py) on an in-memory Docker Engine
(tests/fake_engine.py): the network check and its fix, the flap limit, memory and OOM rows,
the journalled network repair killed at every step, the disk guard's prune rules, the
deploy-lock check, and the tiny HTTP client on a real Unix socket. End to end on a test
host: test_monitor.py, test_disk.py, test_network.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.fake_engine import FakeEngine, Killed, container, network
from tests.host_scripts import deploy_lock, disk_guard as dg, docker_api, network_monitor as nm
from tests.host_scripts import network_repair as nr

NET = "watchme-network"
MIB = 1 << 20
CONFIG = {
    "network": {"name": NET, "subnet": "172.27.0.0/16", "gateway": "172.27.0.1"},
    "members": [
        {"service": "vault", "container": "watchme-vault-api", "ip": "172.27.0.6", "memory_limit": 64 * MIB},
        {"service": "sched", "container": "watchme-scheduler-prod", "ip": "172.27.0.2", "memory_limit": None},
        {"service": "gpt", "container": "api-gpt-v1", "ip": "172.27.0.8", "memory_limit": None},
        {"service": "web", "container": "watchme-web-prod", "ip": "172.27.0.9", "memory_limit": None},
        {"service": "admin", "container": "watchme-admin", "ip": "172.27.0.13", "memory_limit": None},
    ],
}
CONTAINERS = [
    container("a1", "watchme-vault-api", networks={NET: ("172.27.0.6", ["vault"])}, memory=64 * MIB),
    container("b2", "watchme-scheduler-prod", labels={"com.docker.compose.service": "scheduler"}),
    container("c3", "api-gpt-v1", networks={NET: ("172.27.0.99", ["gpt"])}),     # wrong IP
    container("d4", "watchme-web-prod", state="exited"),                         # stopped
]                                                                                # admin: missing


@pytest.fixture(autouse=True)
def state_files(tmp_path, monkeypatch):
    """The scripts' state files live in tmp_path, never in /var/lib/watchme."""
    monkeypatch.setattr(nr, "JOURNAL", str(tmp_path / "network-repair.json"))
    monkeypatch.setattr(nm, "RECONNECTS", str(tmp_path / "reconnects.json"))
    return tmp_path


def check(engine, tmp_path, config=CONFIG, fix=False, window=0):
    members = tmp_path / "members.json"
    members.write_text(json.dumps(config))
    return nm.run_check(engine, str(members), fix, window)


def _member(report, name):
    return next(m for m in report["members"] if m["container"] == name)


# ------------------------------------------------------------------ network check

def test_each_status_with_its_fields(tmp_path):
    engine = FakeEngine([network()], CONTAINERS)
    report = check(engine, tmp_path)
    assert [(m["container"], m["status"], m["state"], m["ip"]) for m in report["members"]] == [
        ("watchme-vault-api", "ok", "running", "172.27.0.6"),
        ("watchme-scheduler-prod", "detached", "running", None),
        ("api-gpt-v1", "wrong_ip", "running", "172.27.0.99"),
        ("watchme-web-prod", "stopped", "exited", None),
        ("watchme-admin", "missing", None, None),
    ]
    assert _member(report, "watchme-scheduler-prod") == {
        "service": "sched", "container": "watchme-scheduler-prod", "expected_ip": "172.27.0.2",
        "state": "running", "status": "detached", "ip": None, "fixed": False, "flapping": False,
        "error": None, "memory_limit": None, "memory": 0, "memory_ok": None,
        "oom_killed": False, "exit_code": 0}
    assert report["counts"] == {"ok": 1, "missing": 1, "stopped": 1, "detached": 1, "wrong_ip": 1,
                                "fixed": 0, "flapping": 0, "memory_mismatch": 0, "oom_killed": 0}
    assert (report["status"], report["exit_code"]) == ("problems", 1)
    assert engine.writes == [], "--check changes nothing"


def test_healthy_is_exit_0(tmp_path):
    config = {**CONFIG, "members": CONFIG["members"][:1]}
    report = check(FakeEngine([network()], CONTAINERS[:1]), tmp_path, config, fix=True)
    assert (report["status"], report["exit_code"]) == ("healthy", 0)


def test_fix_reconnects_detached_and_moves_wrong_ip_keeping_aliases(tmp_path):
    engine = FakeEngine([network()], CONTAINERS[1:3])
    config = {**CONFIG, "members": CONFIG["members"][1:3]}
    report = check(engine, tmp_path, config, fix=True)
    assert [(m, p.rsplit("/", 1)[1], b["Container"][:2]) for m, p, b in engine.writes] == [
        ("POST", "connect", "b2"), ("POST", "disconnect", "c3"), ("POST", "connect", "c3")]
    assert engine.writes[0][2]["EndpointConfig"] == {
        "IPAMConfig": {"IPv4Address": "172.27.0.2"}, "Aliases": ["scheduler"]}
    assert (engine.ip("watchme-scheduler-prod"), engine.ip("api-gpt-v1")) == ("172.27.0.2", "172.27.0.8")
    assert engine.aliases("api-gpt-v1") == ["gpt"]
    assert [m["fixed"] for m in report["members"]] == [True, True]
    assert (report["status"], report["exit_code"], report["counts"]["fixed"]) == ("fixed", 2, 2)


def test_fix_never_starts_stopped_or_missing_ones(tmp_path):
    engine = FakeEngine([network()], CONTAINERS)
    report = check(engine, tmp_path, fix=True)
    assert {b["Container"][:2] for _, _, b in engine.writes} == {"b2", "c3"}
    assert (report["status"], report["exit_code"]) == ("problems", 1)


def test_failed_move_puts_the_container_back_and_reports(tmp_path):
    engine = FakeEngine([network()], [CONTAINERS[2]], fail_connect={"172.27.0.8"})
    report = check(engine, tmp_path, {**CONFIG, "members": [CONFIG["members"][2]]}, fix=True)
    m = report["members"][0]
    assert (m["fixed"], m["error"]) == (False, "Address already in use: 172.27.0.8")
    assert engine.ip("api-gpt-v1") == "172.27.0.99"
    assert report["exit_code"] == 1


@pytest.mark.parametrize("net, expect", [
    (None, "network watchme-network is missing"),
    (network(subnet="10.9.0.0/16", gateway="10.9.0.1"),
     "network watchme-network has subnet 10.9.0.0/16, not 172.27.0.0/16"),
])
def test_no_fix_on_a_wrong_or_missing_network(tmp_path, net, expect):
    engine = FakeEngine([net] if net else [], [CONTAINERS[1]])
    report = check(engine, tmp_path, {**CONFIG, "members": [CONFIG["members"][1]]}, fix=True)
    assert engine.writes == []
    assert report["members"][0]["error"] == expect
    assert (report["network"]["ok"], report["exit_code"]) == (False, 1)


def test_null_ip_member_is_checked_for_membership_only(tmp_path):
    config = {**CONFIG, "members": [{"service": "x", "container": "x", "ip": None}]}
    attached = FakeEngine([network()], [container("e5", "x", networks={NET: ("172.27.5.5", [])})])
    assert _member(check(attached, tmp_path, config), "x")["status"] == "ok"
    detached = FakeEngine([network()], [container("e5", "x")])
    report = check(detached, tmp_path, config, fix=True)
    assert detached.writes[0][2]["EndpointConfig"] == {}  # no IPAMConfig: Docker picks the IP
    assert (report["members"][0]["fixed"], report["exit_code"]) == (True, 2)


def test_memory_mismatch_and_oom_are_reported_with_the_real_limit(tmp_path):
    config = {**CONFIG, "members": [
        {"service": "a", "container": "a", "ip": "172.27.0.6", "memory_limit": 1 << 30},
        {"service": "t", "container": "t", "ip": "172.27.0.7", "memory_limit": 1 << 30}]}
    engine = FakeEngine([network()], [
        container("a1", "a", networks={NET: ("172.27.0.6", [])}, memory=512 * MIB),
        container("t2", "t", state="exited", memory=1 << 30, oom=True, exit_code=137)])
    report = check(engine, tmp_path, config)
    a, t = report["members"]
    assert (a["memory"], a["memory_limit"], a["memory_ok"]) == (512 * MIB, 1 << 30, False)
    assert (t["oom_killed"], t["exit_code"], t["memory"], t["memory_ok"]) == (True, 137, 1 << 30, True)
    assert (report["counts"]["memory_mismatch"], report["counts"]["oom_killed"]) == (1, 1)
    text = nm.render(report)
    assert "  MEMORY    a: limit 512m, registry memory_limit 1g" in text
    assert "  OOM       t: killed (exit 137, OOM killer) with a limit of 1g" in text
    # reported, not an exit code of their own: only t's stop makes it exit 1
    engine.cs[1]["State"] = "running"
    engine.cs[1]["Networks"] = {NET: {"IPAddress": "172.27.0.7", "Aliases": [], "IPAMConfig": None}}
    assert check(engine, tmp_path, config)["exit_code"] == 0


@pytest.mark.parametrize("ago, window, reconnected", [
    (None, 3600, True),      # never reconnected
    (600, 3600, False),      # 10 min ago: a flap
    (4000, 3600, True),      # over an hour ago
    (600, 0, True),          # no window (the deploy's own run, an operator's --fix)
])
def test_flap_window(tmp_path, ago, window, reconnected):
    now = time.time()
    if ago is not None:
        Path(nm.RECONNECTS).write_text(json.dumps({"watchme-scheduler-prod": now - ago}))
    engine = FakeEngine([network()], [CONTAINERS[1]])
    report = check(engine, tmp_path, {**CONFIG, "members": [CONFIG["members"][1]]}, True, window)
    m = report["members"][0]
    assert (m["fixed"], m["flapping"], bool(engine.writes)) == (reconnected, not reconnected, reconnected)
    assert report["exit_code"] == (2 if reconnected else 1)
    recorded = json.loads(Path(nm.RECONNECTS).read_text())["watchme-scheduler-prod"]
    assert (recorded >= now) == reconnected
    if not reconnected:
        assert m["error"].startswith("flapping: already reconnected 10 min ago; not again within 60 min")
        assert "FLAPPING  watchme-scheduler-prod" in nm.render(report)


def test_unreachable_docker_or_members_file_is_exit_3(tmp_path):
    members = tmp_path / "members.json"
    members.write_text(json.dumps(CONFIG))
    report = nm.run_check(docker_api.Docker(path=str(tmp_path / "no.sock")), str(members), False)
    assert (report["status"], report["exit_code"]) == ("unchecked", 3)
    assert "Docker is not answering on" in report["error"]
    report = nm.run_check(FakeEngine(), str(tmp_path / "missing.json"), False)
    assert report["exit_code"] == 3 and "cannot read members file" in report["error"]


def test_json_report_fields(tmp_path, capsys, monkeypatch):
    members = tmp_path / "members.json"
    members.write_text(json.dumps(CONFIG))
    monkeypatch.setattr(nm, "Docker", lambda: FakeEngine([network()], CONTAINERS))
    assert nm.main(["--members", str(members), "--json", "--check"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"status", "exit_code", "fix", "checked_at", "error", "network",
                        "members", "counts", "repair"}
    assert set(out["members"][0]) == {"service", "container", "expected_ip", "state", "status",
                                      "ip", "fixed", "flapping", "error", "memory_limit",
                                      "memory", "memory_ok", "oom_killed", "exit_code"}


def test_text_report_names_each_problem(tmp_path):
    text = nm.render(check(FakeEngine([network()], CONTAINERS), tmp_path, fix=True))
    assert "DETACHED  watchme-scheduler-prod (expected 172.27.0.2): running but not attached" \
           " -> reconnected at 172.27.0.2" in text
    assert "STOPPED   watchme-web-prod (expected 172.27.0.9): not running (exited)" in text
    assert "MISSING   watchme-admin (expected 172.27.0.13): no such container" in text
    assert text.endswith("-> problems (exit 1)")


# ------------------------------------------------------------------ network repair + journal

WANT = {"name": NET, "driver": "bridge", "subnet": "172.27.0.0/16", "gateway": "172.27.0.1"}
DRIFTED = network(subnet="172.27.0.0/24", gateway="172.27.0.254")


def drifted_engine(**kw):
    return FakeEngine([DRIFTED], [
        container("a1", "watchme-alpha", networks={NET: ("172.27.0.6", ["alpha"])}),
        container("f2", "drifter", networks={NET: ("172.27.0.50", ["drift-alias"])}),
        container("s3", "stray", state="exited", networks={NET: ("172.27.0.60", [])}),
        container("o4", "other", networks={"bridge": ("172.17.0.2", [])}),
    ], **kw)


def test_inspect_reports_drift_containers_and_journal():
    state = nr.inspect(drifted_engine(), WANT)
    assert state["drift"] == [["subnet", "172.27.0.0/16", "172.27.0.0/24"],
                              ["gateway", "172.27.0.1", "172.27.0.254"]]
    assert state["containers"] == [
        {"name": "drifter", "ip": "172.27.0.50", "aliases": ["drift-alias"], "running": True},
        {"name": "stray", "ip": "172.27.0.60", "aliases": [], "running": False},
        {"name": "watchme-alpha", "ip": "172.27.0.6", "aliases": ["alpha"], "running": True}]
    assert state["journal"] is None


def test_ensure_creates_a_missing_network_and_leaves_a_right_one():
    engine = FakeEngine()
    assert nr.ensure(engine, WANT, False, {}, print) == 0
    assert engine.writes[0][2]["IPAM"] == {"Config": [{"Subnet": "172.27.0.0/16", "Gateway": "172.27.0.1"}]}
    engine.writes.clear()
    assert nr.ensure(engine, WANT, False, {}, print) == 0
    assert engine.writes == []


def test_ensure_refuses_drift_without_repair():
    engine, log = drifted_engine(), []
    assert nr.ensure(engine, WANT, False, {}, log.append) == 1
    assert engine.writes == []
    assert "  subnet   wanted 172.27.0.0/16    found 172.27.0.0/24" in log[0]


def _repaired(engine):
    assert engine.networks[NET]["IPAM"]["Config"] == [{"Subnet": "172.27.0.0/16", "Gateway": "172.27.0.1"}]
    assert {n: (engine.ip(n), engine.aliases(n)) for n in ("watchme-alpha", "drifter", "stray")} == {
        "watchme-alpha": ("172.27.0.7", ["alpha"]),    # the registry's IP wins
        "drifter": ("172.27.0.50", ["drift-alias"]), "stray": ("172.27.0.60", [])}
    assert "watchme-network" not in engine._find("other")["Networks"]
    assert not Path(nr.JOURNAL).exists()


def test_repair_writes_the_journal_before_the_first_disconnect():
    engine = drifted_engine()
    seen = []
    engine.on_write = lambda method, path: seen.append((path, Path(nr.JOURNAL).exists()))
    assert nr.ensure(engine, WANT, True, {"watchme-alpha": "172.27.0.7"}, print) == 0
    assert seen[0][0].endswith("/disconnect") and seen[0][1], "no journal before the disconnect"
    _repaired(engine)


WRITES = 8  # 3 disconnects, rm, create, 3 connects


@pytest.mark.parametrize("killed_at", range(WRITES))
def test_repair_killed_at_any_step_is_finished_by_the_next_run(killed_at):
    engine = drifted_engine(fail_after=killed_at)
    with pytest.raises(Killed):
        nr.ensure(engine, WANT, True, {"watchme-alpha": "172.27.0.7"}, print)
    assert Path(nr.JOURNAL).exists()
    engine.fail_after = None
    # The next run, without --repair even (the unit at boot, or a plain deploy), finishes it.
    assert nr.ensure(engine, WANT, False, {}, print) == 0
    _repaired(engine)


def test_guard_fix_finishes_a_journal_first_and_check_does_not(tmp_path):
    engine = drifted_engine(fail_after=2)
    with pytest.raises(Killed):
        nr.ensure(engine, WANT, True, {"watchme-alpha": "172.27.0.7"}, print)
    engine.fail_after, before = None, len(engine.writes)
    config = {**CONFIG, "members": [{"service": "alpha", "container": "watchme-alpha", "ip": "172.27.0.7"}]}
    check(engine, tmp_path, config)
    assert len(engine.writes) == before and Path(nr.JOURNAL).exists(), "--check changed something"
    report = check(engine, tmp_path, config, fix=True)
    assert any(line.startswith("created watchme-network (bridge 172.27.0.0/16") for line in report["repair"])
    assert (report["status"], report["members"][0]["status"]) == ("healthy", "ok")
    _repaired(engine)


def test_repair_ip_prefers_the_registry_then_its_own_if_it_fits():
    assert nr.repair_ip({"name": "a", "ip": "10.1.0.5"}, "172.27.0.0/16", {}) == ""
    assert nr.repair_ip({"name": "a", "ip": "172.27.0.3"}, "172.27.0.0/16", {}) == "172.27.0.3"
    assert nr.repair_ip({"name": "a", "ip": "10.9.0.6"}, "172.27.0.0/16", {"a": "172.27.0.6"}) == "172.27.0.6"


RANGE = "172.27.255.0/24"


def test_create_body_keeps_dynamic_addresses_in_the_range_on_a_bridge_too():
    assert nr.create_body({**WANT, "ip_range": RANGE}) == {
        "Name": NET, "Driver": "bridge", "CheckDuplicate": True,
        "IPAM": {"Config": [{"Subnet": "172.27.0.0/16", "Gateway": "172.27.0.1", "IPRange": RANGE}]}}
    engine = FakeEngine()
    assert nr.ensure(engine, {**WANT, "ip_range": RANGE}, False, {}, print) == 0
    assert nr.inspect(engine, {**WANT, "ip_range": RANGE})["report"] == ""


def test_network_without_the_range_is_reported_not_repaired_until_asked():
    """The production network, made by hand without --ip-range: it works, so the deploy and
    the unit go on (exit 0, nothing written) and say how to fix it; --repair recreates it
    with the range, every container back on its IP."""
    engine = FakeEngine([network()], [
        container("a1", "watchme-alpha", networks={NET: ("172.27.0.6", ["alpha"])}),
        container("b2", "watchme-beta", state="exited", networks={NET: ("172.27.0.7", [])})])
    want, log = {**WANT, "ip_range": RANGE}, []
    state = nr.inspect(engine, want)
    assert (state["drift"], state["outdated"]) == ([], [["ip_range", RANGE, "(none)"]])
    assert state["report"].splitlines() == [
        f"{NET} has no range of its own for dynamic addresses: a container started without a "
        "fixed IP (a rollout candidate, a service whose ip is null) can take the registry IP of "
        "a stopped service:",
        f"  ip_range wanted {RANGE}  found (none)",
        "  attached containers (2):",
        "    watchme-alpha                172.27.0.6 aliases alpha",
        "    watchme-beta                 172.27.0.7 (stopped)",
        "  fix: in a maintenance window, rerun with --data network_repair=true to recreate it "
        "and reconnect these containers with their IPs and aliases (each loses the network for "
        "a moment)"]
    assert nr.ensure(engine, want, False, {}, log.append) == 0
    assert engine.writes == [] and log == [state["report"]]
    assert nr.ensure(engine, want, True, {"watchme-alpha": "172.27.0.6"}, print) == 0
    assert engine.networks[NET]["IPAM"]["Config"] == [
        {"Subnet": "172.27.0.0/16", "Gateway": "172.27.0.1", "IPRange": RANGE}]
    assert (engine.ip("watchme-alpha"), engine.aliases("watchme-alpha")) == ("172.27.0.6", ["alpha"])
    assert engine.ip("watchme-beta") == "172.27.0.7"
    assert not Path(nr.JOURNAL).exists()
    engine.writes.clear()
    assert nr.ensure(engine, want, True, {}, print) == 0 and engine.writes == []  # idempotent


def test_check_prints_the_report_or_the_state(monkeypatch, capsys):
    monkeypatch.setattr(nr, "Docker", lambda: drifted_engine())
    args = ["--name", NET, "--subnet", "172.27.0.0/16", "--gateway", "172.27.0.1"]
    assert nr.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{NET} differs from the wanted configuration:\n")
    assert out.rstrip().endswith("(each loses the network for a moment)")
    assert nr.main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report"] == out.rstrip("\n")
    monkeypatch.setattr(nr, "Docker", lambda: FakeEngine([network()]))
    assert nr.main(args) == 0 and capsys.readouterr().out == f"{NET}: as wanted\n"


def test_default_gateway_accepted():
    engine = FakeEngine([{**network(), "IPAM": {"Config": [{"Subnet": "172.27.0.0/16"}]}}])
    assert nr.inspect(engine, WANT)["drift"] == []


# ------------------------------------------------------------------ disk guard

NOW = time.time()


def _iso(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000001Z", time.gmtime(epoch))


@pytest.mark.parametrize("status, name, finished, created, ok, why", [
    ("exited", "old-junk", NOW - 3600, NOW - 7200, True, ""),
    ("exited", "watchme-alpha", NOW - 3600, NOW - 7200, False, "a registry service's container"),
    ("exited", "just-stopped", NOW - 300, NOW - 7200, False, "stopped less than 10 min ago"),
    ("created", "never-ran", None, NOW - 120, False, "stopped less than 10 min ago"),
    ("created", "never-ran-old", None, NOW - 3600, True, ""),
    ("running", "busy", None, NOW - 7200, False, "running"),
], ids=["old-junk", "service", "just-stopped", "never-ran", "never-ran-old", "running"])  # NOW
def test_prunable(status, name, finished, created, ok, why):
    full = {"Name": f"/{name}", "Created": _iso(created),
            "State": {"Status": status, "Running": status == "running",
                      "FinishedAt": _iso(finished) if finished else "0001-01-01T00:00:00Z"}}
    assert dg.prunable(full, {"watchme-alpha"}, NOW, 600) == (ok, why)


def _disk_engine():
    return FakeEngine([network()], [
        container("a1", "old-junk", state="exited", finished=_iso(NOW - 3600)),
        container("b2", "watchme-alpha", state="exited", finished=_iso(NOW - 3600)),
        container("c3", "just-stopped", state="exited", finished=_iso(NOW - 60)),
        container("d4", "busy")])


@pytest.mark.parametrize("percent, all_images, volumes, calls, code", [
    (84, False, False, [], 0),
    (85, False, False, ["DELETE /containers/a1", "POST /images/prune", "POST /build/prune"], 1),
    (90, True, True, ["DELETE /containers/a1",
                      "POST /images/prune?filters=%7B%22dangling%22%3A%20%5B%22false%22%5D%7D",
                      "POST /build/prune", "POST /volumes/prune"], 1),
])
def test_disk_guard_prunes_only_at_threshold(monkeypatch, percent, all_images, volumes, calls, code):
    engine = _disk_engine()
    monkeypatch.setattr(dg, "usage_percent", lambda path: percent)
    out = dg.disk_guard(engine, 85, all_images, volumes, {"watchme-alpha"})
    assert [f"{m} {p.split('?v=')[0]}" for m, p, _ in engine.writes] == \
        [c.replace("a1", "a1" * 32) for c in calls]
    assert not any("networks" in p for _, p, _ in engine.writes)
    assert (out["pruned"], out["exit_code"]) == (bool(calls), code)  # still full: exit 1
    if calls:
        assert out["removed"] == ["old-junk"]
        assert out["kept"] == [["watchme-alpha", "a registry service's container"],
                               ["just-stopped", "stopped less than 10 min ago"]]
        assert engine.writes[0][1].endswith("?v=0"), "anonymous volumes are kept"
        assert {c["Name"] for c in engine.cs} == {"watchme-alpha", "just-stopped", "busy"}


def test_disk_guard_check_changes_nothing(monkeypatch):
    engine = _disk_engine()
    monkeypatch.setattr(dg, "usage_percent", lambda path: 99)
    out = dg.disk_guard(engine, 85, True, True, set(), check=True)
    assert engine.writes == [] and (out["pruned"], out["exit_code"], out["percent"]) == (False, 1, 99)


def test_disk_guard_exit_0_when_pruning_frees_enough(monkeypatch):
    engine = FakeEngine(reclaim=2_500_000_000)
    levels = iter([91, 70])
    monkeypatch.setattr(dg, "usage_percent", lambda path: next(levels))
    out = dg.disk_guard(engine, 85)
    assert (out["percent"], out["percent_after"], out["exit_code"]) == (91, 70, 0)
    assert dg.render(out) == ("disk: 91% of /var/lib/docker used (threshold 85%): pruned, "
                              "reclaimed containers 0B, images 2.5GB, build cache 2.5GB; now 70%")


def test_registry_containers_from_members(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(CONFIG))
    assert "watchme-admin" in dg.registry_containers(str(tmp_path / "m.json"))
    assert dg.registry_containers(str(tmp_path / "none.json")) == set()


# ------------------------------------------------------------------ deploy lock (guard side)

STAT = "4242 (sshd: ubuntu@notty) S 1 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + " 987654 rest"


def test_start_time_is_field_22_even_with_spaces_in_the_name():
    assert deploy_lock.start_time(STAT) == "987654"


@pytest.mark.parametrize("lock, stat, held", [
    ('4242 987654\n{"by": "alice@laptop"}\n', STAT, {"by": "alice@laptop"}),
    ('4242 111\n{"by": "alice@laptop"}\n', STAT, None),     # the pid was recycled
    ('4242 987654\n{"by": "alice@laptop"}\n', None, None),  # the process is gone
    ("", STAT, None),
    ("garbage\n", STAT, None),
])
def test_lock_holder(lock, stat, held):
    assert deploy_lock.holder(lock, lambda pid: stat) == held


# ------------------------------------------------------------------ the HTTP client

def _serve_once(path: Path, answer: bytes) -> list[bytes]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    got = []

    def run():
        conn, _ = server.accept()
        got.append(conn.recv(65536))
        conn.sendall(answer)
        conn.close()
        server.close()

    threading.Thread(target=run, daemon=True).start()
    return got


def test_running_containers_as_the_units_fact_reads_them(capsys, monkeypatch):
    """docker_api.py running: the deploy's RunningContainers without the Docker CLI."""
    from watchme.units import RunningContainers
    engine = FakeEngine([network()], [
        container("a1", "watchme-a", networks={NET: ("172.27.0.6", []), "bridge": ("172.17.0.2", [])},
                  memory=32 * MIB, labels={"com.docker.compose.project.config_files": "/c.yml,/o.yml"}),
        container("b2", "watchme-b", state="exited", networks={NET: ("172.27.0.7", [])})])
    monkeypatch.setattr(docker_api, "Docker", lambda: engine)
    assert docker_api.main(["running", "--", "watchme-a", "watchme-b", "watchme-gone"]) == 0
    assert RunningContainers().process(capsys.readouterr().out.splitlines()) == {
        "watchme-a": {"memory": 32 * MIB, "files": ["/c.yml", "/o.yml"],
                      "ips": {NET: "172.27.0.6", "bridge": "172.17.0.2"}}}
    no_docker = FakeEngine.__bases__[0](path="/nonexistent")  # the real client, nobody answers
    monkeypatch.setattr(docker_api, "Docker", lambda: no_docker)
    assert docker_api.main(["running", "watchme-a"]) == 0 and capsys.readouterr().out == "{}\n"



@pytest.mark.parametrize("body", [
    b"Content-Length: 11\r\n\r\n{\"Id\": \"x\"}",
    b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"Id\"\r\n6\r\n: \"x\"}\r\n0\r\n\r\n",
])
def test_http_client_on_a_unix_socket(tmp_path, body):
    sock = tmp_path / "docker.sock"
    got = _serve_once(sock, b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n" + body)
    status, data = docker_api.Docker(path=str(sock)).request("POST", "/networks/n/connect", {"a": 1})
    assert (status, data) == (200, {"Id": "x"})
    assert got[0].startswith(b"POST /networks/n/connect HTTP/1.0\r\n")
    assert got[0].endswith(b'\r\n\r\n{"a": 1}')
