"""Issue 14 end to end: two real test hosts, one registry, watchme-network as a swarm overlay.

Host a is the front (Nginx, swarm manager), b a worker. They reach each other on Docker's
default bridge, which is also their default route: their "private addresses" are those bridge
IPs (read from the host by the deploy; given here through WATCHME_PRIVATE_ADDRESSES too, as an
operator would, and checked to agree). The stub services are busybox httpd containers (the
image is made inside each host from busybox-static, like tests/fake_services.py does).

Order: one-host deploy on a (bridge) -> the transcriber moves to b and the network migrates
to the overlay (network_repair) keeping the IPs -> routes, names and fixed IPs across hosts,
the front-only port -> the second run changes nothing -> b stopped: a keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import fake_services
from tests.conftest import ROOT, WATCHME, assert_idempotent, run_deploy
from watchme import testhost as th
from watchme.placement import DefaultRouteAddress

pytestmark = pytest.mark.e2e  # two real test hosts (its own fixture, not `testhost`)

VHOST = "api.hey-watch.me"
VAULT = {"name": "vault", "container": "watchme-vault", "ip": "172.27.0.20", "port": 8060}
TRANSCRIBER = {"name": "transcriber", "container": "api-transcriber", "ip": "172.27.0.21",
               "port": 8013}
PROVISIONED = "watchme-testhost-swarm"
# Everything the production bootstrap installs (watchme/packages.py) plus the anchor's busybox.
PACKAGES = ("docker.io docker-compose nginx curl iptables busybox-static certbot "
            "amazon-ecr-credential-helper")
DATA = ["--data", "tls_self_signed=true", "--data", "compose_pull=false"]


def sh(name: str, script: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["docker", "exec", name, "sh", "-c", script], capture_output=True, text=True)
    assert not check or r.returncode == 0, f"{name}: {script}\n{r.stdout}\n{r.stderr}"
    return r


def provisioned_image() -> str:
    """The test-host image with the deploy's packages installed (a docker commit, cached per
    base image): the bootstrap then has nothing to install, as on a prepared server."""
    base = th.build_image()
    recipe = hashlib.sha256(PACKAGES.encode()).hexdigest()[:8]
    tag = f"{PROVISIONED}:{base.rsplit(':', 1)[-1]}-{recipe}"
    if th.image_exists(tag):
        return tag
    h = th.start(image=base)
    try:
        sh(h.name, "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install "
                   f"-y -q --no-install-recommends {PACKAGES} >/dev/null")
        sh(h.name, "systemctl stop docker.socket docker containerd nginx; "
                   "rm -rf /var/lib/docker/* /var/lib/containerd/*; apt-get clean")
        subprocess.run(["docker", "commit", h.name, tag], check=True, capture_output=True)
    finally:
        th.stop(h.name)
    return tag


def bridge_ip(name: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name],
                          capture_output=True, text=True, check=True).stdout.strip()


def compose(s: dict, public: bool) -> str:
    """fake_services' compose file; public: the port on every interface (reached by a's Nginx)."""
    text = fake_services.compose(s)
    return text.replace(f'"127.0.0.1:{s["port"]}:', f'"{s["port"]}:') if public else text


STUB_IMAGE = f"""set -e
for i in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
docker image inspect {fake_services.IMAGE} >/dev/null 2>&1 && exit 0
d=$(mktemp -d) && mkdir -p "$d/bin" "$d/www" && cp /bin/busybox "$d/bin/busybox"
tar -C "$d" -c . | docker import - {fake_services.IMAGE} >/dev/null && rm -rf "$d"
"""


def install_services(name: str) -> None:
    sh(name, STUB_IMAGE)
    for s in (VAULT, TRANSCRIBER):
        path = f"/home/ubuntu/{s['name']}/docker-compose.prod.yml"
        sh(name, f"mkdir -p /home/ubuntu/{s['name']} && cat > {path} <<'EOF'\n"
                 f"{compose(s, public=s is TRANSCRIBER)}EOF\nchown -R ubuntu: /home/ubuntu/{s['name']}")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    image = provisioned_image()
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: th.start(image=image), range(2))
    try:
        # One key and one known_hosts file for both, as for two real servers.
        sh(b.name, f"echo {json.dumps(Path(a.key + '.pub').read_text().strip())} "
                   ">> /home/ubuntu/.ssh/authorized_keys")
        known = tmp_path_factory.mktemp("ssh") / "known_hosts"
        known.write_text(Path(a.known_hosts).read_text() + Path(b.known_hosts).read_text())
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(install_services, (a.name, b.name)))
        yield {"a": a, "b": b, "known": str(known), "ip": {"a": bridge_ip(a.name), "b": bridge_ip(b.name)}}
    finally:
        if not os.environ.get("WATCHME_KEEP_SWARM_HOSTS"):  # set it to look at them afterwards
            th.stop(a.name)
            th.stop(b.name)


def registry(path: Path, transcriber_host: str | None) -> str:
    placed = {**TRANSCRIBER, **({"host": transcriber_host} if transcriber_host else {})}
    return fake_services.registry(path, [VAULT, placed])


@pytest.fixture(scope="module")
def deploy(hosts, tmp_path_factory):
    """deploy(names, transcriber_host, *args) -> Run over the named hosts (a first)."""
    tmp = tmp_path_factory.mktemp("registry")

    def env(names=("a", "b"), transcriber_host="b") -> dict[str, str]:
        return {
            "WATCHME_HOSTS": ",".join(f"{n}=ubuntu@127.0.0.1:{hosts[n].port}" for n in names),
            "WATCHME_SSH_KEY": hosts["a"].key, "WATCHME_KNOWN_HOSTS": hosts["known"],
            "WATCHME_PRIVATE_ADDRESSES": ",".join(f"{n}={hosts['ip'][n]}" for n in names),
            "WATCHME_REGISTRY": registry(tmp / f"{transcriber_host}.yaml", transcriber_host),
        }

    def _deploy(names=("a", "b"), transcriber_host="b", *args):
        return run_deploy(env(names, transcriber_host), "--json", *DATA, *args)

    _deploy.env = lambda *a: {**{k: v for k, v in os.environ.items()
                                 if not k.startswith("WATCHME_")}, **env(*a)}
    return _deploy


def container(name: str, c: str) -> dict:
    out = sh(name, f"docker inspect {c}").stdout
    return json.loads(out)[0]


def net_ip(info: dict) -> str:
    return info["NetworkSettings"]["Networks"]["watchme-network"]["IPAddress"]


def get(name: str, path: str) -> str:
    r = sh(name, f"curl -sk -m 10 --resolve {VHOST}:443:127.0.0.1 https://{VHOST}{path}", check=False)
    return r.stdout.strip()


@pytest.fixture(scope="module")
def single(hosts, deploy):
    """A running one-host deployment on a: both services, the bridge."""
    run = deploy(("a",), None)
    assert run.rc == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def migrated(hosts, deploy, single):
    a, b = hosts["a"].name, hosts["b"].name
    before = container(a, VAULT["container"])
    refused = deploy(("a", "b"), "b")
    assert refused.rc != 0
    assert "driver   wanted overlay" in refused.stderr and "network_repair=true" in refused.stderr
    run = deploy(("a", "b"), "b", "--data", "network_repair=true")
    assert run.rc == 0, run.stderr[-4000:]
    return {"run": run, "before": before, "a": a, "b": b}


def test_migration_keeps_every_ip_and_container(migrated):
    a = migrated["a"]
    after = container(a, VAULT["container"])
    assert after["Id"] == migrated["before"]["Id"]  # reconnected, not recreated
    assert net_ip(after) == net_ip(migrated["before"]) == VAULT["ip"]
    net = json.loads(sh(a, "docker network inspect watchme-network").stdout)[0]
    assert (net["Driver"], net["Scope"], net["Attachable"]) == ("overlay", "swarm", True)
    assert net["IPAM"]["Config"][0]["Subnet"] == "172.27.0.0/16"
    assert net["IPAM"]["Config"][0]["Gateway"] == "172.27.0.1"


def test_transcriber_moved_to_b(migrated):
    a, b = migrated["a"], migrated["b"]
    assert net_ip(container(b, TRANSCRIBER["container"])) == TRANSCRIBER["ip"]
    assert sh(a, f"docker inspect {TRANSCRIBER['container']}", check=False).returncode != 0
    assert sh(a, "systemctl is-enabled watchme-transcriber.service", check=False).returncode != 0
    assert sh(b, "systemctl is-active watchme-transcriber.service").stdout.strip() == "active"


def test_front_nginx_reaches_b(migrated, hosts):
    a = migrated["a"]
    assert get(a, "/transcriber/") == "transcriber"
    assert get(a, "/vault/") == "vault"
    site = sh(a, f"cat /opt/watchme/nginx/{VHOST}").stdout
    assert f"http://{hosts['ip']['b']}:{TRANSCRIBER['port']}/" in site


def http_from(host: str, container: str, to: str, port: int) -> str:
    """The page a container gets from to:port (busybox nc: the static wget crashes in the stub)."""
    r = sh(host, f"docker exec {container} /bin/busybox sh -c "
                 f"'printf \"GET / HTTP/1.0\\r\\n\\r\\n\" | /bin/busybox nc -w 5 {to} {port}'", check=False)
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""


def test_overlay_by_name_and_ip_both_ways(migrated):
    a, b = migrated["a"], migrated["b"]
    for host, me, target in ((a, VAULT, TRANSCRIBER), (b, TRANSCRIBER, VAULT)):
        for to in (target["container"], target["ip"]):
            assert http_from(host, me["container"], to, target["port"]) == target["name"], (host, to)


def reaches(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return b"transcriber" in c.recv(4096)
    except OSError:
        return False


def test_published_port_answers_only_to_the_front(migrated, hosts):
    a, b, ip_b = migrated["a"], migrated["b"], hosts["ip"]["b"]
    port = TRANSCRIBER["port"]
    assert sh(a, f"curl -s -m 5 http://{ip_b}:{port}/").stdout.strip() == "transcriber"
    # This machine reaches b (its ssh port answers) but not the service's port: not the front.
    socket.create_connection((ip_b, 22), timeout=3).close()
    assert not reaches(ip_b, port)
    rule = f"! -s {hosts['ip']['a']}/32 -p tcp -m conntrack --ctorigdstport {port}"
    assert rule in sh(b, "iptables -S DOCKER-USER").stdout
    # The kernel forgets the rule at reboot: the infrastructure unit puts it back.
    sh(b, f"iptables -D DOCKER-USER {rule} --ctdir ORIGINAL -m comment --comment "
          "watchme-front-only -j DROP && systemctl restart watchme-infrastructure.service")
    assert rule in sh(b, "iptables -S DOCKER-USER").stdout


def test_private_addresses_read_from_the_hosts_are_the_bridge_ips(hosts):
    for n in ("a", "b"):
        assert sh(hosts[n].name, DefaultRouteAddress().command()).stdout.strip() == hosts["ip"][n]


def test_second_run_changes_nothing_on_any_host(migrated, deploy):
    assert_idempotent(lambda **kw: deploy(("a", "b"), "b"))


def test_doctor_per_host_and_across_the_overlay(migrated, deploy, hosts):
    env = deploy.env(("a", "b"), "b")
    p = subprocess.run([WATCHME, "doctor", "--json", *DATA], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    report = json.loads(p.stdout)
    rows = {n: {(r["scope"], r["check"]): r for r in rs} for n, rs in report.items()}
    a, b = rows["a"], rows["b"]
    assert a["transcriber", "overlay reaches api-transcriber (on b)"]["ok"]
    assert b["vault", "overlay reaches watchme-vault (on a)"]["ok"]
    route = a["transcriber", "route via nginx"]
    assert route["ok"] and f"-> 200 (http://{hosts['ip']['b']}:8013 on b)" in route["detail"], route
    assert ("transcriber", "container running") in b and ("transcriber", "container running") not in a
    assert ("vault", "route via nginx") not in b  # the worker serves no site


def test_unreachable_b_keeps_a_serving(migrated, deploy, hosts):
    a = migrated["a"]
    site = sh(a, f"cat /opt/watchme/nginx/{VHOST}").stdout
    subprocess.run(["docker", "stop", "-t", "1", hosts["b"].name], check=True, capture_output=True)
    run = deploy(("a", "b"), "b")
    assert run.rc != 0
    assert "b unreachable: the site is left as it is" in run.stderr, run.stderr[-3000:]
    assert get(a, "/vault/") == "vault"
    assert sh(a, f"cat /opt/watchme/nginx/{VHOST}").stdout == site
