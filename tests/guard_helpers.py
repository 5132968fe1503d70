"""Shared by test_monitor.py and test_disk.py: a small service registry and busybox
containers on the real test host (no registry is reachable: the image is made there from
Debian's busybox-static with `docker import`)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import yaml

# group_data/all.py's config_root, read as text: importing it would load the registry.
ROOT_DIR = re.search(r'^config_root = "([^"]+)"', (Path(__file__).resolve().parent.parent /
                     "group_data" / "all.py").read_text(), re.M)[1]
SCRIPTS = f"{ROOT_DIR}/scripts"
MONITOR = f"{SCRIPTS}/network_monitor.py"
DISK_GUARD = f"{SCRIPTS}/disk_guard.py"
NET = "watchme-network"


def write_registry(path: Path, members: list[tuple[str, str, str]]) -> dict[str, str]:
    """A registry of (service, container, ip); start: false, since starting services is the
    units' job and these have no compose file: the tests start the containers themselves."""
    services = [{"name": name, "description": f"guard test {name}", "container": container,
                 "ip": ip, "port": 8060 + i, "public_path": f"/{name}/", "upstream_path": "/",
                 "memory_limit": "16m", "priority": i + 1,
                 "compose_file": f"/home/ubuntu/guard-test/{name}.yml", "start": False}
                for i, (name, container, ip) in enumerate(members)]
    path.write_text(yaml.safe_dump({"services": services}))
    return {"WATCHME_REGISTRY": str(path)}


def sh(host, command: str) -> str:
    """Run as root on the test host; fail the test with the output when it fails."""
    r = host.run(command)
    assert r.rc == 0, f"{command}: rc {r.rc}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def busybox_image(host) -> None:
    """busybox:local from busybox-static. Test hosts share an apt archive cache, so another
    host's apt may hold its lock for a while: retry."""
    for _ in range(40):
        if host.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static").rc == 0:
            break
        time.sleep(3)
    sh(host, "docker image inspect busybox:local >/dev/null 2>&1 || { "
             "rm -rf /tmp/bbroot && mkdir -p /tmp/bbroot/bin /tmp/bbroot/tmp && "
             "cp /bin/busybox /tmp/bbroot/bin/ && "
             "for a in sh sleep cat ls; do ln -s busybox /tmp/bbroot/bin/$a; done && "
             "tar -C /tmp/bbroot -c . | docker import - busybox:local >/dev/null; }")


def ensure_network(host) -> None:
    sh(host, f"docker network inspect {NET} >/dev/null 2>&1 || docker network create "
             f"--subnet 172.27.0.0/16 --gateway 172.27.0.1 {NET} >/dev/null")


def run_container(host, name: str, ip: str | None = None, extra: str = "",
                  memory: str = "16m") -> None:
    """A busybox container; memory: its limit (the registry's memory_limit in these tests)."""
    net = f"--network {NET} --ip {ip}" if ip else ""
    sh(host, f"docker rm -f {name} >/dev/null 2>&1; docker run -d --name {name} {net} "
             f"--memory {memory} {extra} busybox:local busybox sleep 1d >/dev/null")


def ip_of(host, container: str) -> str:
    return sh(host, f"docker inspect -f '{{{{with index .NetworkSettings.Networks \"{NET}\"}}}}"
                    f"{{{{.IPAddress}}}}{{{{end}}}}' {container}").strip()


def apt_install(host, package: str) -> None:
    """Test hosts share an apt archive cache, so another host's apt may hold its lock: retry."""
    for _ in range(40):
        if host.run(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}").rc == 0:
            return
        time.sleep(3)
    raise AssertionError(f"apt-get install {package} kept failing")


def monitor(host, *args: str) -> tuple[int, dict]:
    """One network check run with --json: (exit code, report)."""
    r = host.run(f"python3 {MONITOR} --json {' '.join(args)}")
    return r.rc, json.loads(r.stdout)
