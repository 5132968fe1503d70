"""Test helpers: a local image registry inside a test host, and httpd images of several versions.

Debian's docker-registry package serves 127.0.0.1:5000 (no auth: its default htpasswd realm is
dropped); images are built from busybox-static with `docker import` (no Docker Hub). Each
version is a tiny httpd script, the behaviours a rollout must tell apart.
"""

from __future__ import annotations

from tests.fake_services import _run

REGISTRY = "127.0.0.1:5000"

SETUP_REGISTRY = f"""set -e
command -v docker-registry >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-registry >/dev/null
cat > /etc/docker/registry/config.yml <<'END'
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
  delete:
    enabled: true
http:
  addr: {REGISTRY}
END
systemctl restart docker-registry
for i in $(seq 30); do curl -sf http://{REGISTRY}/v2/ >/dev/null && exit 0; sleep 1; done
exit 1
"""

# version -> the shell the container runs (its port comes from $PORT).
BEHAVIOURS = {
    "v1": 'echo v1 > /www/index.html; exec /bin/busybox httpd -f -p $PORT -h /www',
    "v2": 'echo v2 > /www/index.html; exec /bin/busybox httpd -f -p $PORT -h /www',
    "v2a": 'exit 3',  # exits at once
    # answers 500 to every request
    "v2b": ('while true; do printf "HTTP/1.0 500 Internal Server Error\\r\\nContent-Length: 0\\r\\n\\r\\n" '
            '| /bin/busybox nc -l -p $PORT >/dev/null; done'),
}


def setup_registry(host) -> None:
    _run(host, SETUP_REGISTRY)


def build_and_push(host, repo: str, version: str) -> str:
    """Build repo:version and push it to the registry; returns the reference."""
    ref = f"{REGISTRY}/{repo}:{version}"
    script = BEHAVIOURS[version].replace("'", "'\"'\"'")
    _run(host, f"""set -e
d=$(mktemp -d) && cd "$d"
apt-get download -q busybox-static >/dev/null
mkdir -p root/bin root/www root/etc
dpkg-deb --fsys-tarfile busybox-static_*.deb | tar -xO ./bin/busybox > root/bin/busybox
chmod 755 root/bin/busybox
printf '%s\\n' '#!/bin/busybox sh' '{script}' > root/start && chmod 755 root/start
tar -C root -c . | docker import -c 'ENTRYPOINT ["/bin/busybox", "sh", "/start"]' - {ref} >/dev/null
docker push {ref} >/dev/null
cd / && rm -rf "$d"
""")
    return ref


def compose(name: str, container: str, port: int, image: str) -> str:
    """A compose file as a service repo ships it: no IP, no limit (the override adds them); its
    port comes from an env_file beside it (as the services' .env), so a container that answers
    proves compose read that file (a rollout's candidate included)."""
    return (
        'version: "3.8"\n'
        "services:\n"
        f"  {name}:\n"
        f"    image: {image}\n"
        f"    container_name: {container}\n"
        "    init: true\n"
        f"    env_file: [{name}.env]\n"
        f"    ports: [\"127.0.0.1:{port}:{port}\"]\n"
        "    networks: [watchme-network]\n"
        "networks:\n"
        "  watchme-network:\n"
        "    external: true\n"
    )


def install_compose(host, name: str, text: str, port: int) -> None:
    """The compose file and its env file (0600, as the services' .env) in /home/ubuntu/NAME."""
    d = f"/home/ubuntu/{name}"
    _run(host, f"mkdir -p {d} && cat > {d}/docker-compose.prod.yml <<'END'\n{text}END\n"
               f"printf 'PORT=%s\\n' {port} > {d}/{name}.env && chmod 600 {d}/{name}.env && "
               f"chown -R ubuntu:ubuntu {d}")
