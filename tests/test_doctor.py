"""watchme doctor: the runbook's rows on a real host with two busybox services behind Nginx.

Healthy first (every row passes), then one fault at a time, each undone before the next:
a container stopped, a port closed (container up, nothing published), and an app that
moved so the registry's upstream_path no longer matches it.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess

import pytest

from tests import fake_services
from tests.fake_engine import FakeEngine, container, network
from tests.host_scripts import network_repair
from tests.conftest import ROOT, WATCHME, assert_idempotent
from tests.fake_services import wait
from watchme import doctor

pytestmark = pytest.mark.provisioned  # e2e hosts: packages preinstalled (tests/provisioned.py)

ALPHA = {"name": "alpha", "container": "watchme-alpha", "ip": "172.27.0.6", "port": 8000}
BETA = {"name": "beta", "container": "watchme-beta", "ip": "172.27.0.7", "port": 8001}
VHOST = "api.hey-watch.me"


# Unit: the advice for canned probe values ---------------------------------------------------

@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    path = fake_services.registry(tmp_path_factory.mktemp("reg") / "services.yaml", [ALPHA, BETA])
    old = os.environ.get("WATCHME_REGISTRY")
    os.environ["WATCHME_REGISTRY"] = path
    try:
        data = runpy.run_path(str(ROOT / "group_data" / "all.py"))
        yield {**doctor.settings(data), "env": {"WATCHME_REGISTRY": path}}
    finally:
        os.environ.pop("WATCHME_REGISTRY") if old is None else os.environ.update(WATCHME_REGISTRY=old)


def _member(container, state="running", memory=32 << 20, oom=False, exit_code=0, limit=32 << 20):
    return {"container": container, "state": state, "memory": memory, "memory_limit": limit,
            "memory_ok": memory == limit if memory is not None else None, "oom_killed": oom,
            "exit_code": exit_code}


def _net(members=None, **network):
    return json.dumps({"status": "healthy", "error": None, "network": {
        "name": "watchme-network", "exists": True, "found_subnet": "172.27.0.0/16",
        "found_gateway": "172.27.0.1", "ok": True, **network},
        "members": members or [_member("watchme-alpha"), _member("watchme-beta")]})


def _range(ip_range=None, containers=()):
    """network_repair.py --check --json --name watchme-network --ip-range R, from the script."""
    net = network()
    if ip_range:
        net["IPAM"]["Config"][0]["IPRange"] = ip_range
    return json.dumps(network_repair.inspect(FakeEngine([net], containers), {
        "name": "watchme-network", "ip_range": "172.27.255.0/24"}))


HEALTHY = {"nginx_rc": "0", "nginx_out": "test is successful", "docker_active": "active",
           "docker_info": "0", "MemTotal": "2000000", "MemAvailable": "900000",
           "SwapTotal": "2097148", "SwapFree": "2000000", "virt": "none",
           "guard_disk": json.dumps({"root": "/var/lib/docker", "percent": 40}),
           "guard_net": _net(), "net_range": _range("172.27.255.0/24"),
           **{f"{s}.{k}": v for s in ("alpha", "beta") for k, v in
              (("listen", "yes"), ("upstream", "200"), ("route", "200"),
               ("image", f"r.example/{s}:1"), ("pull", '{"ok": true, "cause": ""}'))}}


def _rows(cfg, **changes) -> dict[tuple[str, str], doctor.Row]:
    values = {**HEALTHY, **{k.replace("__", "."): v for k, v in changes.items()}}
    return {(r.scope, r.check): r for r in doctor.diagnose(values, cfg)}


def test_probe_script_is_valid_sh(cfg):
    p = subprocess.run(["sh", "-n", "-c", doctor.probe_script(cfg)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_healthy_values_pass(cfg):
    rows = _rows(cfg)
    assert all(r.ok for r in rows.values()) and len(rows) == 7 + 2 * 6
    assert rows["host", "watchme-network ip-range"].detail == "172.27.255.0/24"
    off = doctor.diagnose(HEALTHY, {**cfg, "compose_pull": False})
    assert [r.detail for r in off if r.check == "image pull"] == ["pulls off (compose_pull is false)"] * 2


def test_oom_killed_container_with_its_real_limit(cfg):
    r = _rows(cfg, guard_net=_net([_member("watchme-alpha", "exited", 16 << 20, True, 137),
                                   _member("watchme-beta")]),
              alpha__listen="no", alpha__upstream="000", alpha__route="502")
    assert r["alpha", "container running"].cause == (
        "watchme-alpha was killed (exit 137, OOM killer: true) with a limit of 16m; "
        "registry memory_limit 32m")
    assert r["alpha", "route via nginx"].fix.startswith("the container row: start it")


def test_memory_limit_mismatch(cfg):
    r = _rows(cfg, guard_net=_net([_member("watchme-alpha", memory=0), _member("watchme-beta")]))
    row = r["alpha", "memory limit"]
    assert not row.ok and row.detail == "unlimited (registry 32m)"
    assert row.cause.startswith("watchme-alpha runs with a memory limit of unlimited, the registry says 32m")
    assert r["beta", "memory limit"].ok


def test_network_without_the_dynamic_range(cfg):
    """The production network, made by hand without --ip-range: reported with the script's
    own cause and the maintenance-window fix."""
    r = _rows(cfg, net_range=_range(containers=[
        container("a1", "watchme-alpha", networks={"watchme-network": ("172.27.0.6", [])})]))
    row = r["host", "watchme-network ip-range"]
    assert not row.ok and row.detail == "(none) (wanted 172.27.255.0/24)"
    assert row.cause == ("watchme-network has no range of its own for dynamic addresses: a "
                         "container started without a fixed IP (a rollout candidate, a service "
                         "whose ip is null) can take the registry IP of a stopped service")
    assert row.fix.startswith("recreate it in a maintenance window with --data network_repair=true")
    # no network, or no answer: the subnet row says why, no second row
    assert ("host", "watchme-network ip-range") not in _rows(cfg, net_range="")
    missing = json.dumps(network_repair.inspect(FakeEngine(), {"name": "watchme-network"}))
    assert ("host", "watchme-network ip-range") not in _rows(cfg, net_range=missing)


def test_nginx_without_the_location(cfg):
    r = _rows(cfg, beta__route="404")
    assert r["beta", "route via nginx"].cause == "404 from Nginx: no location for /beta/ in the live site"


@pytest.mark.parametrize("key, value, check, cause", [
    ("guard_disk", json.dumps({"root": "/var/lib/docker", "percent": 91}), "docker disk",
     "Docker's disk is nearly full"),
    ("guard_disk", "", "docker disk", "the disk guard cannot look"),
    ("MemAvailable", "100000", "memory", "memory is nearly exhausted"),
    ("SwapTotal", "0", "swap", "no swap"),
    ("guard_net", _net(found_subnet="172.18.0.0/16", found_gateway="172.18.0.1", ok=False),
     "watchme-network subnet", "watchme-network has subnet/gateway 172.18.0.0/16 172.18.0.1"),
    ("guard_net", _net(exists=False, ok=False), "watchme-network subnet",
     "watchme-network does not exist"),
    ("guard_net", "", "watchme-network subnet", "the network check cannot look"),
    ("nginx_rc", "1", "nginx config (nginx -t)", "the Nginx configuration does not load"),
    ("docker_active", "inactive", "docker daemon", "the Docker daemon is down"),
])
def test_host_rows_fail_with_cause(cfg, key, value, check, cause):
    row = _rows(cfg, **{key: value})["host", check]
    assert not row.ok and row.cause.startswith(cause) and row.fix


def test_every_advice_formats(cfg):
    """Every (check, finding) of the table formats with the context its rows give."""
    s = cfg["registry"].enabled_services[0]
    ctx = {**cfg, "name": s.name, "unit": "u", "container": "c", "port": 1, "compose_file": "f",
           "memory_limit": "1g", "real_limit": "1g", "state": "exited", "exit_code": 1,
           "oom": "true", "upstream_path": "/", "upstream_url": "u", "public_path": "/p/",
           "want": "200", "internal": "i", "code": "500", "rcode": "502", "error": "e",
           "found": "x", "swap_file": "/swapfile", "swap_size_mib": 2048, "host": "b",
           "answer": "ping: bad address", "image": "i:1", "detail": "d", "report_head": "r"}
    for check, findings in doctor.ADVICE.items():
        for finding, (cause, fix) in findings.items():
            assert cause.format(**ctx) and fix.format(**ctx), (check, finding)


PULLS = {**{k: v for k, v in HEALTHY.items()}, "alpha.image": "r.example/alpha:1",
         "beta.image": "!the file is missing"}


@pytest.mark.parametrize("answer, ok, cause", [
    ({"ok": True, "cause": ""}, True, None),
    ({"ok": False, "cause": "unauthorized", "detail": "authorization token has expired"}, False,
     "the registry refused the credentials: authorization token has expired"),
    ({"ok": False, "cause": "no_docker"}, False, "the pull check cannot run: docker is not installed"),
    (None, False, "the pull check cannot run: no answer from pull_check.py"),
])
def test_image_pull_row_from_pull_check(cfg, answer, ok, cause):
    values = {**PULLS, "alpha.pull": json.dumps(answer) if answer else ""}
    rows = {(r.scope, r.check): r for r in doctor.diagnose(values, {**cfg, "compose_pull": True})}
    row = rows["alpha", "image pull"]
    assert row.ok == ok and (ok or row.cause == cause)
    beta = rows["beta", "image pull"]
    assert not beta.ok and beta.cause.endswith("the file is missing")


def test_pull_script_and_images(cfg):
    compose = {"/opt/a.yml": {"text": "services:\n  a:\n    image: r.example/a:1\n"}}
    s = cfg["registry"].enabled_services[0]
    images = doctor.service_images(cfg, {s.compose_file: compose["/opt/a.yml"]})
    assert images[s.name] == "r.example/a:1"
    script = doctor.pull_script({**cfg, "ecr_registry": "r.example", "ecr_region": "x y"}, images)
    assert f"{s.name}.pull=$(python3 /opt/watchme/scripts/pull_check.py --json --registry " \
           "r.example --region 'x y' r.example/a:1" in script
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0


# End to end ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def running(deploy, host, cfg):
    run = deploy(env=cfg["env"])  # a new server: units enabled, no compose file yet
    assert run.rc == 0, run.stderr[-3000:]
    fake_services.install(host, [ALPHA, BETA])
    run = deploy(env=cfg["env"])
    assert run.rc == 0, run.stderr[-3000:]
    _wait_healthy(host)
    return run


def _wait_healthy(host) -> None:
    # Nginx keeps an upstream marked failed for fail_timeout (10 s) after a failed request.
    for s in (ALPHA, BETA):
        wait(host, f"[ $(curl -sk -o /dev/null -w '%{{http_code}}' --resolve {VHOST}:443:127.0.0.1 "
                   f"https://{VHOST}/{s['name']}/) = 200 ]", seconds=40)


def run_doctor(testhost_env, cfg, *args) -> tuple[int, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHME_")}
    p = subprocess.run([WATCHME, "doctor", "--json", *args], cwd=ROOT, capture_output=True,
                       text=True, env={**env, **testhost_env, **cfg["env"]}, timeout=120)
    [(_, rows)] = json.loads(p.stdout).items()
    return p.returncode, {(r["scope"], r["check"]): r for r in rows}


def _failing(rows: dict) -> set:
    return {k for k, r in rows.items() if not r["ok"]}


@pytest.mark.e2e
def test_healthy_host_all_rows_pass(running, testhost_env, cfg):
    rc, rows = run_doctor(testhost_env, cfg)
    assert _failing(rows) == set()
    assert rc == 0
    assert len(rows) == 7 + 2 * 6
    assert rows["host", "watchme-network ip-range"]["detail"] == "172.27.255.0/24"  # made by the deploy
    assert rows["alpha", "image pull"]["detail"] == "pulls off (compose_pull is false)"  # test hosts


@pytest.mark.e2e
def test_text_table(running, testhost_env, cfg):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHME_")}
    p = subprocess.run([WATCHME, "doctor"], cwd=ROOT, capture_output=True, text=True,
                       env={**env, **testhost_env, **cfg["env"]})
    assert p.returncode == 0
    assert ": all 19 checks pass" in p.stdout.splitlines()[0]
    assert "route via nginx" in p.stdout


@pytest.mark.e2e
def test_data_overrides_reach_the_checks(running, testhost_env, cfg):
    """doctor sees what a deploy sees: `--data` overrides apply (here: the disk threshold)."""
    rc, rows = run_doctor(testhost_env, cfg, "--data", "disk_prune_threshold=1")
    assert rc == 1 and _failing(rows) == {("host", "docker disk")}
    assert rows["host", "docker disk"]["detail"].endswith("% used (limit 1%)")


def test_bad_data_is_refused():
    p = subprocess.run([WATCHME, "doctor", "--data", "novalue"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "--data 'novalue': expected key=value" in p.stderr


@pytest.mark.e2e
def test_container_stopped(running, host, testhost_env, cfg):
    host.check_output("systemctl stop watchme-alpha.service")
    try:
        rc, rows = run_doctor(testhost_env, cfg)
        assert rc == 1
        assert _failing(rows) == {("alpha", c) for c in
                                  ("container running", "port listening", "upstream answers", "route via nginx")}
        assert rows["alpha", "memory limit"]["detail"] == "no container (registry 32m)"
        assert rows["alpha", "container running"]["cause"] == "no container watchme-alpha"
        assert rows["alpha", "container running"]["fix"].startswith("sudo systemctl start watchme-alpha.service")
        route = rows["alpha", "route via nginx"]
        assert route["cause"].startswith("502: Nginx gets no good answer from http://localhost:8000/")
        assert route["fix"].startswith("the container row: start it (sudo systemctl start watchme-alpha.service)")
    finally:
        host.check_output("systemctl start watchme-alpha.service")
        _wait_healthy(host)


@pytest.mark.e2e
def test_port_closed(running, host, testhost_env, cfg):
    """The container runs, but its port is not published (a compose file without ports:)."""
    host.check_output("systemctl stop watchme-alpha.service && docker run -d --name watchme-alpha "
                      f"--network watchme-network --ip {ALPHA['ip']} --memory 32m {fake_services.IMAGE} "
                      "/bin/busybox sleep 1d")
    try:
        rc, rows = run_doctor(testhost_env, cfg)
        assert rc == 1
        assert _failing(rows) == {("alpha", c) for c in
                                  ("port listening", "upstream answers", "route via nginx")}
        port = rows["alpha", "port listening"]
        assert port["cause"] == "watchme-alpha runs but nothing listens on port 8000"
        assert port["fix"].startswith("docker port watchme-alpha must show 8000")
        assert rows["alpha", "route via nginx"]["fix"].startswith("the port row: publish port 8000")
    finally:
        host.check_output("docker rm -f watchme-alpha && systemctl start watchme-alpha.service")
        _wait_healthy(host)


@pytest.mark.e2e
def test_upstream_path_wrong(running, host, testhost_env, cfg):
    """The app moved under /api/beta/: Nginx still sends /beta/ to its root (upstream_path /)."""
    host.check_output("docker exec watchme-beta /bin/busybox sh -c "
                      "'mkdir -p /www/api/beta && mv /www/index.html /www/api/beta/'")
    try:
        rc, rows = run_doctor(testhost_env, cfg)
        assert rc == 1
        assert _failing(rows) == {("beta", "upstream answers"), ("beta", "route via nginx")}
        up = rows["beta", "upstream answers"]
        assert up["detail"] == "GET http://localhost:8001/ -> 404"
        assert up["cause"] == "the app answers on port 8001 but not at /: a path mismatch"
        route = rows["beta", "route via nginx"]
        assert route["detail"] == f"GET /beta/ (Host: {VHOST}) -> 404"
        assert "upstream_path mismatch" in route["cause"]
        assert route["fix"].startswith("set upstream_path for beta in services.yaml")
    finally:
        host.check_output("docker exec watchme-beta /bin/busybox sh -c "
                          "'mv /www/api/beta/index.html /www/index.html'")
    _wait_healthy(host)


@pytest.mark.e2e
def test_oom_killed_container_with_its_real_limit_e2e(running, host, testhost_env, cfg):
    """A real OOM kill (the kernel's OOM killer in an 8m cgroup): the row names it and the
    container's real limit next to the registry's."""
    host.check_output("systemctl stop watchme-alpha.service && docker rm -f watchme-alpha >/dev/null 2>&1; "
                      "docker run -d --name watchme-alpha --network watchme-network "
                      f"--ip {ALPHA['ip']} --memory 8m --memory-swap 8m {fake_services.IMAGE} "
                      "/bin/busybox sh -c 'a=x; while true; do a=$a$a; done' >/dev/null")
    try:
        wait(host, "[ $(docker inspect -f '{{.State.Running}}' watchme-alpha) = false ]", seconds=60)
        rc, rows = run_doctor(testhost_env, cfg)
        assert rc == 1
        row = rows["alpha", "container running"]
        assert not row["ok"]
        assert row["cause"] == ("watchme-alpha was killed (exit 137, OOM killer: true) with a limit "
                                "of 8m; registry memory_limit 32m"), row
        assert rows["alpha", "memory limit"]["detail"] == "8m (registry 32m)"
    finally:
        host.check_output("docker rm -f watchme-alpha >/dev/null && systemctl start watchme-alpha.service")
        _wait_healthy(host)


@pytest.mark.e2e
def test_doctor_changed_nothing(running, deploy, cfg):
    assert_idempotent(deploy, env=cfg["env"])
