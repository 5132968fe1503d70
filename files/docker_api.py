"""The Docker Engine API over its Unix socket, for the host scripts (standard library only).

Shared by network_monitor.py, network_repair.py and disk_guard.py, installed beside them in
{config_root}/scripts. Run itself, it answers the deploy's RunningContainers fact
(watchme/units.py) without the Docker CLI, whose 37 MB would be a no-op deploy's memory
peak on the host (bench/monitor_memory.sh):

    docker_api.py running NAME...   {name: {"memory", "files", "ips"}} of those that run
    docker_api.py labelled LABEL    "/NAME VALUE IP..." per container with the label (the
                                    rollout candidates: watchme/candidate.py's Candidates)

A minimal HTTP/1.0 client: http.client would import email and ssl, which costs ~5 MB and
~60 ms per run on the server, more than the rest of a check. Unversioned paths speak the
daemon's own API version.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from urllib.parse import quote


class Unavailable(Exception):
    """Docker cannot be asked at all (the scripts exit 3)."""


class DockerError(Exception):
    """Docker answered a request with an error."""


class Docker:
    def __init__(self, path: str | None = None, timeout: float = 10):
        host = os.environ.get("DOCKER_HOST", "")
        self.path = path or (host[len("unix://"):] if host.startswith("unix://") else
                             "/var/run/docker.sock")
        self.timeout = timeout

    def request(self, method: str, path: str, body=None, timeout: float | None = None):
        """(status, decoded JSON or None). Raises Unavailable if nobody answers."""
        payload = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path} HTTP/1.0\r\nHost: docker\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
        chunks = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout or self.timeout)
                sock.connect(self.path)
                sock.sendall(head.encode() + payload)
                while True:  # HTTP/1.0: the daemon closes the connection after the answer
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            header, _, raw = b"".join(chunks).partition(b"\r\n\r\n")
            status = int(header.split(b" ", 2)[1])
        except (OSError, ValueError, IndexError) as e:
            raise Unavailable(f"Docker is not answering on {self.path}: {e}") from e
        if b"transfer-encoding: chunked" in header.lower():
            raw = dechunk(raw)
        try:
            data = json.loads(raw) if raw.strip() else None
        except ValueError:
            data = raw.decode(errors="replace")
        return status, data

    def get(self, path: str):
        """The answer, None for 404; Unavailable for any other error."""
        status, data = self.request("GET", path)
        if status == 404:
            return None
        if status >= 400:
            raise Unavailable(f"Docker answered {status} to GET {path}: {message(data)}")
        return data

    def post(self, path: str, body=None, timeout: float | None = None):
        status, data = self.request("POST", path, body, timeout)
        if status >= 400:
            raise DockerError(message(data))
        return data

    def delete(self, path: str):
        status, data = self.request("DELETE", path)
        if status >= 400:
            raise DockerError(message(data))
        return data

    # The calls every script makes, so their paths are written once.
    _info: dict = {}  # socket path -> GET /info, once per process (info())

    def info(self) -> dict:
        """GET /info, asked once per process: ~10 ms of the daemon's time, and the plan runner
        (watchme/fact_batch.py) answers the disk and the network fact in one process."""
        if self.path not in Docker._info:
            Docker._info[self.path] = self.get("/info") or {}
        return Docker._info[self.path]

    def network(self, name: str):
        return self.get(f"/networks/{quote(name, safe='')}")

    def containers(self, filters: dict | None = None) -> list[dict]:
        path = "/containers/json?all=1"
        if filters:
            path += "&filters=" + quote(json.dumps(filters))
        return self.get(path) or []

    def inspect(self, container: str):
        return self.get(f"/containers/{quote(container, safe='')}/json")


def dechunk(raw: bytes) -> bytes:
    out = []
    while raw:
        size, _, rest = raw.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out.append(rest[:n])
        raw = rest[n + 2:]
    return b"".join(out)


def message(data) -> str:
    if isinstance(data, dict):
        return str(data.get("message", data))
    return str(data).strip()


def endpoint(container: dict | None, network: str) -> dict | None:
    """A container's endpoint on network (from the list or from inspect), or None."""
    return (((container or {}).get("NetworkSettings") or {}).get("Networks") or {}).get(network)


def aliases(container: dict | None, ep: dict | None) -> list[str]:
    """Aliases to keep when reconnecting: the endpoint's own (minus the short id Docker adds
    by itself) or, for a detached compose container, its service name as compose sets it."""
    if not container:
        return []
    short = (container.get("Id") or "")[:12]
    if ep and ep.get("Aliases"):
        return [a for a in ep["Aliases"] if a != short]
    service = (container.get("Labels") or (container.get("Config") or {}).get("Labels")
               or {}).get("com.docker.compose.service")
    return [service] if service else []


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_json(path: str, data) -> None:
    """Write atomically (rename), so a crash leaves the old file or the new one."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.new"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def running(docker: Docker, names: list[str]) -> dict:
    """{container: {"memory": HostConfig.Memory, "files": [the compose files it was created
    from], "ips": {network: ip}}} of the given containers that run; missing ones are left out."""
    out = {}
    for name in names:
        c = docker.inspect(name)
        if not c or not (c.get("State") or {}).get("Running"):
            continue
        labels = (c.get("Config") or {}).get("Labels") or {}
        files = labels.get("com.docker.compose.project.config_files") or ""
        nets = (c.get("NetworkSettings") or {}).get("Networks") or {}
        out[(c.get("Name") or name).lstrip("/")] = {
            "memory": int((c.get("HostConfig") or {}).get("Memory") or 0),
            "files": [f for f in files.split(",") if f],
            "ips": {n: (ep or {}).get("IPAddress") or "" for n, ep in nets.items()}}
    return out


def labelled(docker: Docker, label: str) -> list[str]:
    """Lines "/NAME LABEL-VALUE IP..." of every container (running or not) with the label:
    what `docker inspect -f '{{.Name}} {{index .Config.Labels "L"}}{{range
    .NetworkSettings.Networks}} {{.IPAddress}}{{end}}'` prints (networks by name, as Go
    ranges over a map)."""
    lines = []
    for c in docker.containers({"label": [label]}):
        nets = (c.get("NetworkSettings") or {}).get("Networks") or {}
        ips = "".join(" " + ((nets[n] or {}).get("IPAddress") or "") for n in sorted(nets))
        name = next(iter(c.get("Names") or []), "/" + (c.get("Id") or "")[:12])
        lines.append(f"{name} {(c.get('Labels') or {}).get(label, '')}{ips}")
    return sorted(lines)


def main(argv: list[str]) -> int:
    """running NAME...: the RunningContainers fact; labelled LABEL: the Candidates fact."""
    if argv[:1] == ["labelled"] and len(argv) == 2:
        try:
            for line in labelled(Docker(), argv[1]):
                print(line)
        except Unavailable:
            pass  # no Docker, no container (as `docker ps ... 2>/dev/null` says)
        return 0
    if argv[:1] != ["running"]:
        print("usage: docker_api.py running NAME... | labelled LABEL", file=sys.stderr)
        return 2
    try:
        print(json.dumps(running(Docker(), [a for a in argv[1:] if a != "--"])))
    except Unavailable:
        print("{}")  # no Docker, no running container (as `docker inspect ... || true` says)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
