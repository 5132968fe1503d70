"""tasks/network.py on a real test host: watchme-network, its drift and repair, its range for
dynamic addresses, and the compose audit. Two busybox services on fixed IPs, and a third
whose compose file has the seed's bug (`driver: bridge`)."""

from __future__ import annotations

import ipaddress
import json

import pytest
import yaml

from tests import fake_services
from tests.fake_services import wait
from tests.conftest import assert_idempotent

pytestmark = [pytest.mark.e2e, pytest.mark.provisioned]  # packages preinstalled

ALPHA = {"name": "alpha", "container": "watchme-alpha", "ip": "172.27.0.6", "port": 8000}
BETA = {"name": "beta", "container": "watchme-beta", "ip": "172.27.0.7", "port": 8001}
# start: false: with its own network and a fixed IP, compose could not start it anyway.
GAMMA = {"name": "gamma", "container": "watchme-gamma", "ip": "172.27.0.8", "port": 8002, "start": False}
GAMMA_FILE = "/home/ubuntu/gamma/docker-compose.prod.yml"
NET = "watchme-network"
RANGE = "172.27.255.0/24"  # network_ip_range's default: the subnet's last /24
WANTED_IPAM = [{"Subnet": "172.27.0.0/16", "IPRange": RANGE, "Gateway": "172.27.0.1"}]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("registry")
    return {"WATCHME_REGISTRY": fake_services.registry(d / "r.yaml", [ALPHA, BETA, GAMMA])}


@pytest.fixture(scope="module")
def first_run(deploy, host, env):
    run = deploy(env=env)
    assert run.rc == 0, run.stderr[-3000:]
    fake_services.install(host, [ALPHA, BETA, GAMMA], owned=("gamma",))
    run = deploy(env=env)
    assert run.rc == 0, run.stderr[-3000:]
    for s in (ALPHA, BETA):
        wait(host, f"curl -sf http://127.0.0.1:{s['port']}/ | grep -qx {s['name']}")
    return run


def _inspect(host) -> dict:
    return json.loads(host.check_output(f"docker network inspect {NET}"))[0]


def _ip_and_aliases(host, container: str) -> tuple[str, list[str]]:
    c = json.loads(host.check_output(f"docker inspect {container}"))[0]
    ep = c["NetworkSettings"]["Networks"][NET]
    return ep["IPAddress"], [a for a in ep["Aliases"] or [] if a != c["Id"][:12]]


def test_network_created_as_wanted(first_run, host):
    net = _inspect(host)
    assert net["Driver"] == "bridge"
    assert net["IPAM"]["Config"] == WANTED_IPAM
    assert net["Labels"] == {}, "a plain Docker network: no compose project owns it"
    infra = host.service("watchme-infrastructure.service")
    assert infra.is_running and infra.is_enabled


def test_services_joined_with_their_registry_ips(first_run, host):
    for s in (ALPHA, BETA):
        assert _ip_and_aliases(host, s["container"])[0] == s["ip"]


def test_running_containers_from_the_script_as_from_the_cli(first_run, host):
    """The units' RunningContainers fact answers the same through the host script (the
    Engine API, a no-op's answer) as through the Docker CLI (a new host's, before the
    scripts are installed)."""
    from watchme.units import RunningContainers
    fact, names = RunningContainers(), [ALPHA["container"], BETA["container"], "watchme-none"]

    def read(script: str) -> dict:
        return fact.process(host.check_output(fact.command(names, script=script)).splitlines())

    api = read("/opt/watchme/scripts/docker_api.py")
    assert api == read("/nonexistent/docker_api.py")  # the CLI
    assert set(api) == {ALPHA["container"], BETA["container"]}
    alpha = api[ALPHA["container"]]
    assert alpha["ips"][NET] == ALPHA["ip"] and alpha["memory"] > 0
    assert "/opt/watchme/compose/alpha.override.yml" in alpha["files"]


def _dynamic_ip(host, name: str = "dynamic") -> str:
    """The address Docker gives a container started on the network without --ip."""
    host.check_output(f"docker run -d --name {name} --network {NET} {fake_services.IMAGE} "
                      "/bin/busybox sleep 600")
    try:
        return _ip_and_aliases(host, name)[0]
    finally:
        host.check_output(f"docker rm -f {name}")


def test_a_container_without_an_ip_gets_one_from_the_range(first_run, host):
    """A rollout candidate or a null-IP service never takes a stopped service's fixed IP."""
    assert ipaddress.ip_address(_dynamic_ip(host)) in ipaddress.ip_network(RANGE)


def test_compose_audit_reports_driver_bridge(first_run, host):
    assert (f"compose audit: {GAMMA_FILE} (gamma): networks.{NET} has driver: bridge" in first_run.stderr)
    assert "fix: rerun with --data compose_migrate=true" in first_run.stderr
    # Only reported: the file is as the service's owner left it.
    assert host.file(GAMMA_FILE).content_string == fake_services.compose(GAMMA, owned=True)
    assert host.run(f"ls {GAMMA_FILE}.backup.*").rc != 0
    for s in (ALPHA, BETA):
        assert f"/home/ubuntu/{s['name']}/docker-compose.prod.yml" not in first_run.stderr


@pytest.fixture(scope="module")
def drifted(first_run, host):
    """watchme-network recreated by hand with another subnet and gateway; alpha (by its
    unit) and a hand-started container with an alias are attached to it."""
    host.check_output("systemctl stop watchme-alpha.service watchme-beta.service")
    host.check_output(f"docker network rm {NET} && docker network create --subnet 172.27.0.0/24 "
                      f"--gateway 172.27.0.254 {NET}")
    host.check_output(f"docker run -d --init --name drifter --network {NET} --ip 172.27.0.50 "
                      f"--network-alias drift-alias {fake_services.IMAGE} /bin/busybox sh -c "
                      "'echo drifter > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www'")
    host.check_output("systemctl start watchme-alpha.service")
    wait(host, "curl -sf http://127.0.0.1:8000/ | grep -qx alpha")
    return _inspect(host)


def test_drift_fails_with_the_diff_and_changes_nothing(drifted, deploy, host, env):
    run = deploy(env=env)
    assert run.rc != 0
    err = run.stderr
    assert f"{NET} differs from the wanted configuration:" in err
    assert "subnet   wanted 172.27.0.0/16    found 172.27.0.0/24" in err
    assert "gateway  wanted 172.27.0.1       found 172.27.0.254" in err
    assert "drifter                      172.27.0.50 aliases drift-alias" in err
    assert "watchme-alpha                172.27.0.6 aliases alpha" in err
    assert run.last_line.strip().startswith("fix: rerun with --data network_repair=true")
    assert _inspect(host)["Id"] == drifted["Id"], "the network was touched"
    assert not host.service("watchme-beta.service").is_running, "a unit was started"


def test_repair_recreates_and_keeps_ips_and_aliases(drifted, deploy, host, env):
    before = {c: _ip_and_aliases(host, c) for c in ("drifter", "watchme-alpha")}
    run = deploy("--data", "network_repair=true", env=env)
    assert run.rc == 0, run.stderr[-3000:]
    net = _inspect(host)
    assert net["IPAM"]["Config"] == WANTED_IPAM
    assert {c: _ip_and_aliases(host, c) for c in before} == before
    # Name and alias resolution over the new network, both ways.
    assert host.check_output("docker exec watchme-alpha /bin/busybox wget -qO- http://drift-alias:8080/") == "drifter"
    assert host.check_output("docker exec drifter /bin/busybox wget -qO- http://alpha:8000/") == "alpha"
    wait(host, "docker exec drifter /bin/busybox wget -qO- http://watchme-beta:8001/ | grep -qx beta")
    assert _ip_and_aliases(host, "watchme-beta")[0] == BETA["ip"]


def test_migrate_rewrites_with_a_backup(repaired, deploy, host, env):
    original = fake_services.compose(GAMMA, owned=True)
    run = deploy("--data", "compose_migrate=true", env=env)
    assert run.rc == 0, run.stderr[-3000:]
    assert f"Migrate {GAMMA_FILE} to external {NET}" in run.changed()
    backups = host.check_output(f"ls {GAMMA_FILE}.backup.*").split()
    assert len(backups) == 1
    assert host.file(backups[0]).content_string == original
    new = host.file(GAMMA_FILE).content_string
    assert new == original.replace("    driver: bridge\n", "    external: true\n")
    assert yaml.safe_load(new)["networks"] == {NET: {"external": True}}
    assert (host.file(GAMMA_FILE).user, host.file(GAMMA_FILE).mode) == ("ubuntu", 0o644)
    assert host.run(f"/usr/bin/docker-compose -f {GAMMA_FILE} config -q").rc == 0


@pytest.fixture(scope="module")
def repaired(drifted, deploy, host, env):
    """The migrate test needs a converged network, whichever order the tests run in."""
    if _inspect(host)["IPAM"]["Config"][0]["Subnet"] != "172.27.0.0/16":
        assert deploy("--data", "network_repair=true", env=env).rc == 0


def test_no_service_starts_on_a_drifted_network(repaired, deploy, host, env):
    """The infrastructure unit checks the network too: drifted, it fails and takes its
    dependants down with it, instead of letting them start on the wrong subnet."""
    host.check_output("systemctl stop watchme-alpha.service watchme-beta.service; "
                      f"docker rm -f drifter; docker network rm {NET} && "
                      f"docker network create --subnet 10.99.0.0/24 --gateway 10.99.0.1 {NET}")
    r = host.run("systemctl restart watchme-infrastructure.service")
    assert r.rc != 0
    log = host.check_output("journalctl -u watchme-infrastructure.service -n 20 --no-pager")
    assert f"{NET} differs from the wanted configuration:" in log
    assert "subnet   wanted 172.27.0.0/16    found 10.99.0.0/24" in log
    assert host.run("systemctl start watchme-alpha.service").rc != 0
    assert host.run("docker inspect watchme-alpha").rc != 0
    # An empty drifted network is repaired the same way; the units then start again.
    run = deploy("--data", "network_repair=true", env=env)
    assert run.rc == 0, run.stderr[-3000:]
    for s in (ALPHA, BETA):
        wait(host, f"curl -sf http://127.0.0.1:{s['port']}/ | grep -qx {s['name']}")
        assert _ip_and_aliases(host, s["container"])[0] == s["ip"]


@pytest.fixture(scope="module")
def hand_made(repaired, host):
    """watchme-network as the production server has it: made by hand with the right subnet
    and gateway but no --ip-range, the services attached with their IPs."""
    host.check_output("systemctl stop watchme-alpha.service watchme-beta.service; "
                      f"docker rm -f drifter; docker network rm {NET} && docker network create "
                      f"--subnet 172.27.0.0/16 --gateway 172.27.0.1 {NET} && "
                      "systemctl start watchme-alpha.service watchme-beta.service")
    for s in (ALPHA, BETA):
        wait(host, f"curl -sf http://127.0.0.1:{s['port']}/ | grep -qx {s['name']}")
    net = _inspect(host)
    assert "IPRange" not in net["IPAM"]["Config"][0]
    return net


def test_a_network_without_the_range_is_reported_not_repaired(hand_made, deploy, host, env):
    run = deploy(env=env)
    assert run.rc == 0, run.stderr[-3000:]
    assert f"{NET} has no range of its own for dynamic addresses" in run.stderr
    assert f"ip_range wanted {RANGE}  found (none)" in run.stderr
    assert "fix: in a maintenance window, rerun with --data network_repair=true" in run.stderr
    assert _inspect(host)["Id"] == hand_made["Id"], "the network was recreated without asking"
    assert not [op for op in run.changed() if "network" in op.lower()], run.changed()
    # The infrastructure unit (boot, restart) runs the same check: it works, so it starts.
    assert host.run("systemctl restart watchme-infrastructure.service").rc == 0
    assert _inspect(host)["Id"] == hand_made["Id"]
    for s in (ALPHA, BETA):  # restarted with it, on the same network and IPs
        wait(host, f"curl -sf http://127.0.0.1:{s['port']}/ | grep -qx {s['name']}")
        assert _ip_and_aliases(host, s["container"])[0] == s["ip"]


def test_network_repair_adds_the_range_and_keeps_the_ips(hand_made, deploy, host, env):
    before = {s["container"]: _ip_and_aliases(host, s["container"]) for s in (ALPHA, BETA)}
    run = deploy("--data", "network_repair=true", env=env)
    assert run.rc == 0, run.stderr[-3000:]
    net = _inspect(host)
    assert net["Id"] != hand_made["Id"] and net["IPAM"]["Config"] == WANTED_IPAM
    assert {c: _ip_and_aliases(host, c) for c in before} == before
    assert ipaddress.ip_address(_dynamic_ip(host)) in ipaddress.ip_network(RANGE)
    again = deploy("--data", "network_repair=true", env=env)
    assert again.rc == 0 and again.changed() == [], again.changed()
    assert _inspect(host)["Id"] == net["Id"]


def test_second_run_changes_nothing(repaired, deploy, env):
    assert_idempotent(deploy, env=env)

