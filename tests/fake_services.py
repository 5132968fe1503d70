"""Registry services as tiny containers on a real test host (no image registry is reachable).

The image is made inside the host: busybox from Debian's busybox-static package, put into a
one-file rootfs with `docker import`. Each service runs `busybox httpd` on its registry port,
joins watchme-network as external with its registry IP, and serves its own name.
"""

from __future__ import annotations

from pathlib import Path

import yaml

IMAGE = "watchme-busybox:test"

# apt-get download does not take the lock on /var/cache/apt/archives, which the test hosts
# share; dpkg-deb only unpacks, nothing is installed on the host.
BUILD_IMAGE = f"""set -e
docker image inspect {IMAGE} >/dev/null 2>&1 && exit 0
d=$(mktemp -d) && cd "$d"
apt-get download -q busybox-static >/dev/null
mkdir -p root/bin root/www
dpkg-deb --fsys-tarfile busybox-static_*.deb | tar -xO ./bin/busybox > root/bin/busybox
chmod 755 root/bin/busybox
tar -C root -c . | docker import - {IMAGE} >/dev/null
cd / && rm -rf "$d"
"""


def registry(path: Path, services: list[dict]) -> str:
    """Write a registry of small services to path; returns the path for WATCHME_REGISTRY."""
    defaults = {"upstream_path": "/", "memory_limit": "32m", "priority": 3}
    entries = [{**defaults, "public_path": f"/{s['name']}/",
                "description": f"Test service {s['name']} (busybox httpd)",
                "compose_file": f"/home/ubuntu/{s['name']}/docker-compose.prod.yml", **s}
               for s in services]
    path.write_text(yaml.safe_dump({"services": entries}, sort_keys=False))
    return str(path)


def compose(s: dict, network: str = "watchme-network", owned: bool = False) -> str:
    """A compose file for service s; owned=True is the seed's bug (driver: bridge)."""
    net = "    driver: bridge\n" if owned else "    external: true\n"
    addr = f"        ipv4_address: {s['ip']}\n" if not owned else ""
    return (
        # 2.4: the newest format compose v1 reads with mem_limit (v2 reads it too)
        'version: "2.4"\n'
        "services:\n"
        f"  {s['name']}:\n"
        f"    image: {IMAGE}\n"
        f"    container_name: {s['container']}\n"
        f"    mem_limit: {s.get('memory_limit', '32m')}\n"
        "    init: true  # httpd as PID 1 would ignore SIGTERM: every stop would wait 10 s\n"
        "    # the page names the service, so a test sees which container answered\n"
        f"    command: [\"/bin/busybox\", \"sh\", \"-c\", \"echo {s['name']} > /www/index.html && "
        f"exec /bin/busybox httpd -f -p {s['port']} -h /www\"]\n"
        f"    ports: [\"127.0.0.1:{s['port']}:{s['port']}\"]\n"
        "    networks:\n"
        f"      {network}:\n"
        f"{addr}"
        "\n"
        "networks:\n"
        f"  {network}:\n"
        f"{net}"
    )


def install(host, services: list[dict], owned: tuple[str, ...] = ()) -> None:
    """Build the image and write each service's compose file on the test host."""
    _run(host, BUILD_IMAGE)
    for s in services:
        path = f"/home/ubuntu/{s['name']}/docker-compose.prod.yml"
        text = compose(s, owned=s["name"] in owned)
        _run(host, f"mkdir -p /home/ubuntu/{s['name']} && cat > {path} <<'EOF'\n{text}EOF\n"
                   f"chown -R ubuntu:ubuntu /home/ubuntu/{s['name']}")


def _run(host, script: str) -> str:
    r = host.run(script)
    assert r.rc == 0, f"{script}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def wait(host, check: str, seconds: int = 30) -> None:
    """Poll a shell check on the host (services take a moment to come up)."""
    r = host.run(f"for i in $(seq {seconds * 2}); do {check} && exit 0; sleep 0.5; done; exit 1")
    assert r.rc == 0, f"not true after {seconds}s: {check}"
