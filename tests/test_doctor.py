"""watchme doctor: the runbook's rows on a real host with two busybox services behind Nginx.

Healthy first (every row passes), then one fault at a time, each undone before the next:
a container stopped, a port closed (container up, nothing published), and an app that
moved so the registry's upstream_path no longer matches it.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests import fake_services
from tests.conftest import ROOT, WATCHME, assert_idempotent
from tests.fake_services import wait
from watchme import doctor

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
        yield {**doctor.settings(), "env": {"WATCHME_REGISTRY": path}}
    finally:
        os.environ.pop("WATCHME_REGISTRY") if old is None else os.environ.update(WATCHME_REGISTRY=old)


HEALTHY = {"nginx_rc": "0", "nginx_out": "test is successful", "docker_active": "active",
           "docker_info": "0", "data_root": "/var/lib/docker", "disk_pct": "40",
           "MemTotal": "2000000", "MemAvailable": "900000", "SwapTotal": "2097148",
           "SwapFree": "2000000", "virt": "none", "net_rc": "0", "net": "172.27.0.0/16 172.27.0.1",
           **{f"{s}.{k}": v for s in ("alpha", "beta") for k, v in
              (("state", "running 0 false"), ("listen", "yes"), ("upstream", "200"), ("route", "200"))}}


def _rows(cfg, **changes) -> dict[tuple[str, str], doctor.Row]:
    values = {**HEALTHY, **{k.replace("__", "."): v for k, v in changes.items()}}
    return {(r.scope, r.check): r for r in doctor.diagnose(values, cfg)}


def test_probe_script_is_valid_sh(cfg):
    p = subprocess.run(["sh", "-n", "-c", doctor.probe_script(cfg)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_healthy_values_pass(cfg):
    assert all(r.ok for r in _rows(cfg).values())


def test_oom_killed_container(cfg):
    r = _rows(cfg, alpha__state="exited 137 true", alpha__listen="no", alpha__upstream="000",
              alpha__route="502")
    assert "OOM killer: true" in r["alpha", "container running"].cause
    assert r["alpha", "route via nginx"].fix.startswith("the container row: start it")


def test_nginx_without_the_location(cfg):
    r = _rows(cfg, beta__route="404")
    assert r["beta", "route via nginx"].cause == "404 from Nginx: no location for /beta/ in the live site"


@pytest.mark.parametrize("key, value, check, cause", [
    ("disk_pct", "91", "docker disk", "Docker's disk is nearly full"),
    ("MemAvailable", "100000", "memory", "memory is nearly exhausted"),
    ("SwapTotal", "0", "swap", "no swap"),
    ("net", "172.18.0.0/16 172.18.0.1", "watchme-network subnet", "watchme-network has subnet/gateway"),
    ("net_rc", "1", "watchme-network subnet", "watchme-network does not exist"),
    ("nginx_rc", "1", "nginx config (nginx -t)", "the Nginx configuration does not load"),
    ("docker_active", "inactive", "docker daemon", "the Docker daemon is down"),
])
def test_host_rows_fail_with_cause(cfg, key, value, check, cause):
    row = _rows(cfg, **{key: value})["host", check]
    assert not row.ok and row.cause.startswith(cause) and row.fix


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
        wait(host, f"[ $(curl -s -o /dev/null -w '%{{http_code}}' -H 'Host: {VHOST}' "
                   f"http://127.0.0.1/{s['name']}/) = 200 ]", seconds=40)


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
    assert len(rows) == 6 + 2 * 4


@pytest.mark.e2e
def test_text_table(running, testhost_env, cfg):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHME_")}
    p = subprocess.run([WATCHME, "doctor"], cwd=ROOT, capture_output=True, text=True,
                       env={**env, **testhost_env, **cfg["env"]})
    assert p.returncode == 0
    assert ": all 14 checks pass" in p.stdout.splitlines()[0]
    assert "route via nginx" in p.stdout


@pytest.mark.e2e
def test_container_stopped(running, host, testhost_env, cfg):
    host.check_output("systemctl stop alpha.service")
    try:
        rc, rows = run_doctor(testhost_env, cfg)
        assert rc == 1
        assert _failing(rows) == {("alpha", c) for c in
                                  ("container running", "port listening", "upstream answers", "route via nginx")}
        assert rows["alpha", "container running"]["cause"] == "no container watchme-alpha"
        assert rows["alpha", "container running"]["fix"].startswith("sudo systemctl start alpha.service")
        route = rows["alpha", "route via nginx"]
        assert route["cause"].startswith("502: Nginx gets no good answer from http://localhost:8000/")
        assert route["fix"].startswith("the container row: start it (sudo systemctl start alpha.service)")
    finally:
        host.check_output("systemctl start alpha.service")
        _wait_healthy(host)


@pytest.mark.e2e
def test_port_closed(running, host, testhost_env, cfg):
    """The container runs, but its port is not published (a compose file without ports:)."""
    host.check_output("systemctl stop alpha.service && docker run -d --name watchme-alpha "
                      f"--network watchme-network --ip {ALPHA['ip']} {fake_services.IMAGE} "
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
        host.check_output("docker rm -f watchme-alpha && systemctl start alpha.service")
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
def test_doctor_changed_nothing(running, deploy, cfg):
    assert_idempotent(deploy, env=cfg["env"])
