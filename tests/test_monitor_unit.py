"""Unit tests: the monitor's logic on canned Docker API answers, its tiny HTTP client on a
real Unix socket, and the deploy's disk and monitor operations the way pyinfra tests its own
(facts in, commands or noop out). The end-to-end behaviour is in test_monitor.py/test_disk.py.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
from pyinfra.api import FunctionCommand
from pyinfra.api.exceptions import DeployError
from pyinfra.context import ctx_host

from watchme import disk, monitor
from watchme.registry import load_data

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("network_monitor", ROOT / "files" / "network_monitor.py")
nm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nm)

CONFIG = {
    "network": {"name": "watchme-network", "subnet": "172.27.0.0/16", "gateway": "172.27.0.1"},
    "members": [
        {"service": "vault", "container": "watchme-vault-api", "ip": "172.27.0.6"},
        {"service": "sched", "container": "watchme-scheduler-prod", "ip": "172.27.0.2"},
        {"service": "gpt", "container": "api-gpt-v1", "ip": "172.27.0.8"},
        {"service": "web", "container": "watchme-web-prod", "ip": "172.27.0.9"},
        {"service": "admin", "container": "watchme-admin", "ip": "172.27.0.13"},
    ],
}
NETWORK = {"Name": "watchme-network", "Id": "n1",
           "IPAM": {"Config": [{"Subnet": "172.27.0.0/16", "Gateway": "172.27.0.1"}]}}


def _container(cid, name, state="running", ip=None, labels=None, aliases=None):
    nets = {}
    if ip:
        nets["watchme-network"] = {"IPAddress": ip, "Aliases": aliases}
    return {"Id": cid * 8, "Names": [f"/{name}"], "State": state, "Labels": labels or {},
            "NetworkSettings": {"Networks": nets}}


CONTAINERS = [
    _container("a1", "watchme-vault-api", ip="172.27.0.6"),
    _container("b2", "watchme-scheduler-prod",
               labels={"com.docker.compose.service": "scheduler"}),       # detached
    _container("c3", "api-gpt-v1", ip="172.27.0.99"),                      # wrong IP
    _container("d4", "watchme-web-prod", state="exited"),                  # stopped
]                                                                          # admin: missing


class FakeDocker:
    """Answers like the Engine API and applies connects/disconnects to its containers."""

    def __init__(self, network=NETWORK, containers=CONTAINERS, fail_connect=()):
        self.network = copy.deepcopy(network)
        self.containers = copy.deepcopy(containers)
        self.fail_connect = set(fail_connect)
        self.posts = []

    def _by_id(self, cid):
        return next(c for c in self.containers if c["Id"] == cid)

    def get(self, path):
        if path.startswith("/networks/"):
            return self.network
        if path.startswith("/containers/json"):
            return self.containers
        if path.startswith("/containers/"):
            c = copy.deepcopy(self._by_id(path.split("/")[2]))
            for ep in c["NetworkSettings"]["Networks"].values():  # inspect adds the short id
                ep["Aliases"] = (ep.get("Aliases") or []) + [c["Id"][:12]]
            return c
        raise AssertionError(path)

    def post(self, path, body=None, timeout=None):
        self.posts.append((path, body))
        if path.endswith("/disconnect"):
            self._by_id(body["Container"])["NetworkSettings"]["Networks"].pop("watchme-network")
        elif path.endswith("/connect"):
            ip = body["EndpointConfig"]["IPAMConfig"]["IPv4Address"]
            if ip in self.fail_connect:
                raise nm.DockerError(f"Address already in use: {ip}")
            self._by_id(body["Container"])["NetworkSettings"]["Networks"]["watchme-network"] = {
                "IPAddress": ip, "Aliases": body["EndpointConfig"].get("Aliases")}
        return {}


def _member(report, container):
    return next(m for m in report["members"] if m["container"] == container)


# ------------------------------------------------------------------ network check

def test_each_status_with_its_fields():
    report = nm.finish(nm.evaluate(CONFIG, NETWORK, CONTAINERS), fixing=False)
    assert [(m["container"], m["status"], m["state"], m["ip"]) for m in report["members"]] == [
        ("watchme-vault-api", "ok", "running", "172.27.0.6"),
        ("watchme-scheduler-prod", "detached", "running", None),
        ("api-gpt-v1", "wrong_ip", "running", "172.27.0.99"),
        ("watchme-web-prod", "stopped", "exited", None),
        ("watchme-admin", "missing", None, None),
    ]
    assert _member(report, "watchme-scheduler-prod") == {
        "service": "sched", "container": "watchme-scheduler-prod", "expected_ip": "172.27.0.2",
        "state": "running", "status": "detached", "ip": None, "fixed": False, "error": None}
    assert report["counts"] == {"ok": 1, "missing": 1, "stopped": 1, "detached": 1,
                                "wrong_ip": 1, "fixed": 0}
    assert (report["status"], report["exit_code"]) == ("problems", 1)
    assert report["network"]["ok"] is True


def test_healthy_is_exit_0():
    healthy = [_container("a1", "watchme-vault-api", ip="172.27.0.6")]
    config = {**CONFIG, "members": CONFIG["members"][:1]}
    report = nm.finish(nm.evaluate(config, NETWORK, healthy), fixing=True)
    assert (report["status"], report["exit_code"]) == ("healthy", 0)


def test_fix_reconnects_detached_and_moves_wrong_ip_keeping_aliases():
    docker = FakeDocker(containers=[
        CONTAINERS[1],
        _container("c3", "api-gpt-v1", ip="172.27.0.99", aliases=["gpt"])])
    config = {**CONFIG, "members": CONFIG["members"][1:3]}
    report = nm.evaluate(config, docker.get("/networks/x"), docker.get("/containers/json"))
    nm.fix(docker, report)
    report = nm.finish(report, fixing=True)
    assert docker.posts == [
        ("/networks/watchme-network/connect", {"Container": "b2" * 8, "EndpointConfig": {
            "IPAMConfig": {"IPv4Address": "172.27.0.2"}, "Aliases": ["scheduler"]}}),
        ("/networks/watchme-network/disconnect", {"Container": "c3" * 8}),
        ("/networks/watchme-network/connect", {"Container": "c3" * 8, "EndpointConfig": {
            "IPAMConfig": {"IPv4Address": "172.27.0.8"}, "Aliases": ["gpt"]}}),
    ]
    assert [m["fixed"] for m in report["members"]] == [True, True]
    assert (report["status"], report["exit_code"]) == ("fixed", 2)
    assert report["counts"]["fixed"] == 2


def test_fix_never_starts_stopped_or_missing_ones():
    docker = FakeDocker()
    report = nm.evaluate(CONFIG, NETWORK, docker.containers)
    nm.fix(docker, report)
    report = nm.finish(report, fixing=True)
    touched = {body["Container"] for _, body in docker.posts}
    assert touched == {"b2" * 8, "c3" * 8}
    assert (report["status"], report["exit_code"]) == ("problems", 1)  # stopped + missing remain


def test_failed_move_puts_the_container_back_and_reports():
    docker = FakeDocker(containers=[_container("c3", "api-gpt-v1", ip="172.27.0.99")],
                        fail_connect={"172.27.0.8"})
    config = {**CONFIG, "members": [CONFIG["members"][2]]}
    report = nm.evaluate(config, NETWORK, docker.containers)
    nm.fix(docker, report)
    report = nm.finish(report, fixing=True)
    m = report["members"][0]
    assert (m["fixed"], m["error"]) == (False, "Address already in use: 172.27.0.8")
    assert docker.posts[-1][1]["EndpointConfig"]["IPAMConfig"] == {"IPv4Address": "172.27.0.99"}
    assert docker.containers[0]["NetworkSettings"]["Networks"]["watchme-network"]["IPAddress"] == \
        "172.27.0.99"
    assert report["exit_code"] == 1


@pytest.mark.parametrize("network, expect", [
    (None, "network watchme-network is missing"),
    ({**NETWORK, "IPAM": {"Config": [{"Subnet": "10.9.0.0/16", "Gateway": "10.9.0.1"}]}},
     "network watchme-network has subnet 10.9.0.0/16, not 172.27.0.0/16"),
])
def test_no_fix_on_a_wrong_or_missing_network(network, expect):
    docker = FakeDocker(network=network, containers=[CONTAINERS[1]])
    config = {**CONFIG, "members": [CONFIG["members"][1]]}
    report = nm.evaluate(config, network, docker.containers)
    nm.fix(docker, report)
    report = nm.finish(report, fixing=True)
    assert docker.posts == []
    assert report["members"][0]["error"] == expect
    assert report["network"]["ok"] is False
    assert report["exit_code"] == 1


def test_unreachable_docker_or_members_file_is_exit_3(tmp_path):
    members = tmp_path / "members.json"
    members.write_text(json.dumps(CONFIG))
    report = nm.run_check(nm.Docker(path=str(tmp_path / "no.sock")), str(members), False)
    assert (report["status"], report["exit_code"]) == ("unchecked", 3)
    assert "Docker is not answering on" in report["error"]
    report = nm.run_check(FakeDocker(), str(tmp_path / "missing.json"), False)
    assert report["exit_code"] == 3 and "cannot read members file" in report["error"]


def test_json_report_fields(tmp_path, capsys, monkeypatch):
    members = tmp_path / "members.json"
    members.write_text(json.dumps(CONFIG))
    monkeypatch.setattr(nm, "Docker", lambda: FakeDocker())
    assert nm.main(["--members", str(members), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"status", "exit_code", "fix", "checked_at", "error", "network",
                        "members", "counts"}
    assert set(out["network"]) == {"name", "subnet", "gateway", "exists", "found_subnet",
                                   "found_gateway", "ok"}
    assert set(out["members"][0]) == {"service", "container", "expected_ip", "state", "status",
                                      "ip", "fixed", "error"}


def test_text_report_names_each_problem():
    docker = FakeDocker()
    report = nm.evaluate(CONFIG, NETWORK, docker.containers)
    nm.fix(docker, report)
    text = nm.render(nm.finish(report, fixing=True))
    assert "DETACHED  watchme-scheduler-prod (expected 172.27.0.2): running but not attached" \
           " -> reconnected at 172.27.0.2" in text
    assert "STOPPED   watchme-web-prod (expected 172.27.0.9): not running (exited)" in text
    assert "MISSING   watchme-admin (expected 172.27.0.13): no such container" in text
    assert text.endswith("-> problems (exit 1)")


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


@pytest.mark.parametrize("body", [
    b"Content-Length: 11\r\n\r\n{\"Id\": \"x\"}",
    b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"Id\"\r\n6\r\n: \"x\"}\r\n0\r\n\r\n",
])
def test_http_client_on_a_unix_socket(tmp_path, body):
    sock = tmp_path / "docker.sock"
    got = _serve_once(sock, b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n" + body)
    status, data = nm.Docker(path=str(sock)).request("POST", "/networks/n/connect", {"a": 1})
    assert (status, data) == (200, {"Id": "x"})
    assert got[0].startswith(b"POST /networks/n/connect HTTP/1.0\r\n")
    assert got[0].endswith(b'\r\n\r\n{"a": 1}')


# ------------------------------------------------------------------ disk guard (host side)

@pytest.mark.parametrize("percent, all_images, volumes, calls, code", [
    (84, False, False, [], 0),
    (85, False, False, ["/containers/prune", "/images/prune", "/build/prune"], 1),
    (90, True, True, ["/containers/prune",
                      "/images/prune?filters=%7B%22dangling%22%3A%20%5B%22false%22%5D%7D",
                      "/build/prune", "/volumes/prune"], 1),
])
def test_disk_guard_prunes_only_at_threshold(monkeypatch, percent, all_images, volumes, calls, code):
    docker = FakeDocker()
    docker.get = lambda path: {"DockerRootDir": "/var/lib/docker"}
    monkeypatch.setattr(nm, "usage_percent", lambda path: percent)
    out = nm.disk_guard(docker, 85, all_images, volumes)
    assert [p for p, _ in docker.posts] == calls
    assert "/networks/prune" not in calls  # would delete watchme-network while services are down
    assert (out["pruned"], out["exit_code"]) == (bool(calls), code)  # still full: exit 1


def test_disk_guard_exit_0_when_pruning_frees_enough(monkeypatch):
    docker = FakeDocker()
    docker.get = lambda path: {"DockerRootDir": "/var/lib/docker"}
    docker.post = lambda path, body=None, timeout=None: {"SpaceReclaimed": 2_500_000_000}
    levels = iter([91, 70])
    monkeypatch.setattr(nm, "usage_percent", lambda path: next(levels))
    out = nm.disk_guard(docker, 85, False, False)
    assert (out["percent"], out["percent_after"], out["exit_code"]) == (91, 70, 0)
    assert nm.render_disk(out) == ("disk: 91% of /var/lib/docker used (threshold 85%): pruned, "
                                   "reclaimed containers 2.5GB, images 2.5GB, build cache 2.5GB; "
                                   "now 70%")


# ------------------------------------------------------------------ deploy operations

class FakeHost:
    name = "testhost"
    print_prefix = "[testhost] "

    def __init__(self, facts, data=None, ops_change=0, executing=False, done=()):
        self.facts = facts
        self.data = SimpleNamespace(**(data or {}))
        self.data.get = lambda key, default=None: getattr(self.data, key, default)
        self.noops = []
        self.current_op_hash = "mine"
        meta = lambda changed: SimpleNamespace(is_complete=lambda: True,
                                               did_change=lambda: changed)
        self.state = SimpleNamespace(
            is_executing=executing,
            get_meta_for_host=lambda h: SimpleNamespace(ops_change=ops_change),
            ops={self: {f"op{i}": SimpleNamespace(operation_meta=meta(c))
                        for i, c in enumerate(done)}})

    def get_fact(self, fact, **kwargs):
        return self.facts[fact]

    def noop(self, text):
        self.noops.append(text)


def _run(op, fake, **kwargs):
    with ctx_host.use(fake):
        return list(op._inner(**kwargs))


USAGE = {"root": "/var/lib/docker", "size_kib": 100, "used_kib": 50, "avail_kib": 50, "percent": 50}


def test_disk_fact_parses_df():
    fact = disk.DockerDiskUsage()
    assert fact.process(["/var/lib/docker 264212084 24995260 81395652 24%"]) == {
        "root": "/var/lib/docker", "size_kib": 264212084, "used_kib": 24995260,
        "avail_kib": 81395652, "percent": 24}
    assert fact.process([]) is None
    assert "docker info -f '{{.DockerRootDir}}'" in fact.command()


@pytest.mark.parametrize("usage, threshold, noop", [
    (None, 85, "disk: Docker is not answering yet; nothing to prune"),
    (USAGE, 51, "disk: 50% of /var/lib/docker used, below the 51% threshold; nothing to prune"),
])
def test_disk_op_noop_below_threshold(usage, threshold, noop):
    fake = FakeHost({disk.DockerDiskUsage: usage})
    assert _run(disk.docker_prune, fake, threshold=threshold) == []
    assert fake.noops == [noop]


@pytest.mark.parametrize("all_images, volumes, commands", [
    (False, False, ["docker container prune -f", "docker image prune -f", "docker builder prune -f"]),
    (True, False, ["docker container prune -f", "docker image prune -f -a", "docker builder prune -f"]),
    (False, True, ["docker container prune -f", "docker image prune -f", "docker builder prune -f",
                   "docker volume prune -f"]),
])
def test_disk_op_prunes_at_threshold(all_images, volumes, commands):
    fake = FakeHost({disk.DockerDiskUsage: USAGE})
    (cmd,) = _run(disk.docker_prune, fake, threshold=50, all_images=all_images, volumes=volumes)
    assert isinstance(cmd, FunctionCommand)
    assert cmd.args[0] == commands
    assert not any("network" in c or "system" in c for c in cmd.args[0])
    assert fake.noops == []


def _report(*members, network_ok=True, status="healthy"):
    return {"exit": 0, "output": [], "report": {
        "status": status, "error": None,
        "network": {"name": "watchme-network", "ok": network_ok, "exists": network_ok,
                    "subnet": "172.27.0.0/16", "gateway": "172.27.0.1",
                    "found_subnet": None, "found_gateway": None},
        "members": [{"container": c, "expected_ip": "172.27.0.20", "state": st, "status": s,
                     "ip": None, "fixed": f, "error": None} for c, st, s, f in members],
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
    fake = FakeHost({monitor.NetworkReport: first}, ops_change=ops_change, executing=executing,
                    done=done)
    commands = _run(monitor.network_check, fake, **ARGS)
    assert bool(commands) == runs
    if runs:
        assert isinstance(commands[0], FunctionCommand) and commands[0].args == (
            ARGS["script"], ARGS["members"], True)
    else:
        assert fake.noops and fake.noops[0].startswith("network monitor: watchme-network:")


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


def test_members_are_enabled_services_with_an_ip():
    from tasks import monitor as task
    with ctx_host.use(FakeHost({}, DATA)):
        assert task.members() == {
            "network": {"name": "watchme-network", "subnet": "172.27.0.0/16",
                        "gateway": "172.27.0.1"},
            "members": [{"service": "svc-a", "container": "mon-a", "ip": "172.27.0.20"}]}


@pytest.mark.parametrize("key, value, message", [
    ("disk_prune_threshold", 150, "disk_prune_threshold: 150 is not a percentage; fix: an "
                                  "integer from 1 to 100 (default 85)"),
    ("disk_prune_threshold", "85", "disk_prune_threshold: '85' is not a percentage"),
    ("prune_volumes", "yes", "prune_volumes: 'yes' is not true or false; fix: set "
                             "prune_volumes to True or False in group_data"),
    ("guard_interval", "every 5", "guard_interval: 'every 5' is not a systemd time span"),
])
def test_bad_data_is_refused_with_key_and_fix(key, value, message):
    from tasks import monitor as task
    with ctx_host.use(FakeHost({}, {**DATA, key: value})):
        with pytest.raises(DeployError, match=message.replace("(", r"\(").replace(")", r"\)")):
            task.check_data()


def _render(name, **data):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(name).render(**data)


def test_guard_env_and_units_render_from_data():
    env = _render("guard.env.j2", monitor_fix=True, disk_prune_threshold=90,
                  prune_all_images=True, prune_volumes=False)
    assert 'MONITOR_ARGS="--fix"\nDISK_ARGS="--threshold 90 --all-images"\n' in env
    timer = _render("watchme-guard.timer.j2", guard_interval="5min")
    assert "OnUnitActiveSec=5min\n" in timer and "WantedBy=timers.target" in timer
    service = _render("watchme-guard.service.j2", scripts_dir="/r/scripts", monitor_fix=False)
    assert "ExecStart=/bin/sh /r/scripts/check-infrastructure.sh\n" in service
    assert "Type=oneshot" in service
    with pytest.raises(jinja2.UndefinedError):
        _render("watchme-guard.timer.j2")
