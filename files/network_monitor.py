#!/usr/bin/env python3
"""WatchMe network monitor and disk guard (the seed's scripts/network_monitor.py, rebuilt).

Installed by the deploy (tasks/monitor.py) and run every 5 minutes by watchme-guard.timer
through check-infrastructure.sh. Standard library only (the server has no pip); it talks to
the Docker Engine API on its Unix socket ($DOCKER_HOST if it is unix://, else
/var/run/docker.sock), two GETs when all is well, so a run stays small and quick on a host
with ~400 MB free (bench/monitor_memory.sh measures it).

    network_monitor.py [--members FILE] [--fix] [--json]
    network_monitor.py --disk-guard [--threshold PCT] [--all-images] [--volumes] [--json]

Network check. FILE (default: ../monitor/members.json next to this script, rendered from the
service registry) lists the network and every container with its fixed IP:
    {"network": {"name", "subnet", "gateway"}, "members": [{"service", "container", "ip"}]}
Each member is one of
    ok        running and attached with its IP
    missing   no container of that name
    stopped   the container exists but is not running (exited, created, restarting, dead)
    detached  running but not attached to the network
    wrong_ip  attached with another IP
--fix reconnects `detached` members with their IP (`docker network connect --ip`), and moves
`wrong_ip` members (disconnect, connect with the IP, same aliases). It never starts a
container: starting services is their systemd units' job, so `stopped` and `missing` stay
problems. Nothing is fixed while the network itself is missing or has another subnet (the
deploy's network task owns it; recreating it would cut every service off).

Exit codes:
    0  healthy: the network is right and every member is ok
    1  problems remain (including missing and stopped containers, and everything found
       without --fix), so watchme-guard.service fails and shows in `systemctl --failed`
    2  problems were found and --fix repaired all of them (the timer counts this as success;
       the journal keeps what was fixed)
    3  could not check: Docker not answering, or the members file missing or unreadable

--json prints one object instead of text:
    status      "healthy" | "fixed" | "problems" | "unchecked" (exit codes 0, 2, 1, 3)
    exit_code   the exit code above
    fix         whether --fix was given
    checked_at  UTC time, ISO 8601
    error       why the check could not run (status "unchecked"), else null
    network     {"name", "subnet", "gateway"} as expected, plus "exists" (bool), "found_subnet"
                and "found_gateway" (null when missing) and "ok" (exists with that subnet
                and gateway)
    members     one per member, in file order: "service", "container", "expected_ip",
                "state" (Docker's state, e.g. "running" or "exited"; null when missing),
                "status" (as above, found before any fix), "ip" (its IP on the network
                before any fix; null when not attached), "fixed" (bool: --fix repaired it and
                Docker now reports the expected IP), "error" (why the fix failed, else null)
    counts      {"ok", "missing", "stopped", "detached", "wrong_ip", "fixed"}

Disk guard (--disk-guard). Reads the usage of the filesystem holding Docker's data root (as
`df` computes it) and, only when it is at or above PCT (default 85), prunes what
`docker system prune -f` would, except networks: stopped containers, dangling images (all
unused images with --all-images) and the build cache; unused volumes only with --volumes.
Networks are left alone because `docker system prune` deletes every network without a
running container, watchme-network included whenever the services are stopped.
    Exit codes: 0 below PCT, or pruned back below it; 1 a prune failed or usage is still at
    or above PCT afterwards (something else fills the disk); 3 Docker not answering.
    --json: {"root", "percent", "threshold", "pruned", "reclaimed" {kind: bytes},
             "percent_after", "exit_code", "error"}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from urllib.parse import quote

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MEMBERS = os.path.join(os.path.dirname(HERE), "monitor", "members.json")
STATUSES = ("ok", "missing", "stopped", "detached", "wrong_ip")
RUNNING = ("running", "paused")  # a paused container keeps its network endpoint


class Unavailable(Exception):
    """Docker cannot be asked at all: exit 3."""


class DockerError(Exception):
    """Docker answered a request with an error."""


class Docker:
    """The few Engine API calls we need; unversioned paths speak the daemon's own version.

    A minimal HTTP/1.0 client over the Unix socket: http.client would import email and ssl,
    which costs ~5 MB and ~60 ms per run on the server, more than the rest of the check."""

    def __init__(self, path: str | None = None, timeout: float = 10):
        host = os.environ.get("DOCKER_HOST", "")
        self.path = path or (host[len("unix://"):] if host.startswith("unix://") else
                             "/var/run/docker.sock")
        self.timeout = timeout

    def request(self, method: str, path: str, body=None, timeout: float | None = None):
        """Returns (status, decoded JSON or None). Raises Unavailable if nobody answers."""
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
            raw = _dechunk(raw)
        try:
            data = json.loads(raw) if raw.strip() else None
        except ValueError:
            data = raw.decode(errors="replace")
        return status, data

    def get(self, path: str):
        status, data = self.request("GET", path)
        if status == 404:
            return None
        if status >= 400:
            raise Unavailable(f"Docker answered {status} to GET {path}: {_message(data)}")
        return data

    def post(self, path: str, body=None, timeout: float | None = None):
        status, data = self.request("POST", path, body, timeout)
        if status >= 400:
            raise DockerError(_message(data))
        return data


def _dechunk(raw: bytes) -> bytes:
    out = []
    while raw:
        size, _, rest = raw.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out.append(rest[:n])
        raw = rest[n + 2:]
    return b"".join(out)


def _message(data) -> str:
    if isinstance(data, dict):
        return str(data.get("message", data))
    return str(data).strip()


# ---------------------------------------------------------------------------- network check

def load_members(path: str) -> dict:
    with open(path) as f:
        config = json.load(f)
    net = config["network"]
    for key in ("name", "subnet", "gateway"):
        if not isinstance(net.get(key), str):
            raise ValueError(f"network.{key} is missing")
    for i, m in enumerate(config["members"]):
        if not isinstance(m.get("container"), str) or not isinstance(m.get("ip"), str):
            raise ValueError(f"members[{i}] needs container and ip")
    return config


def _names(container: dict) -> list[str]:
    return [n.lstrip("/") for n in container.get("Names") or []]


def _endpoint(container: dict, network: str) -> dict | None:
    return ((container.get("NetworkSettings") or {}).get("Networks") or {}).get(network)


def evaluate(config: dict, network: dict | None, containers: list[dict]) -> dict:
    """The report (see the docstring) from Docker's answers, before any fix."""
    want = config["network"]
    ipam = (((network or {}).get("IPAM") or {}).get("Config") or [{}])[0]
    found_subnet, found_gw = ipam.get("Subnet"), ipam.get("Gateway")
    net = {**{k: want[k] for k in ("name", "subnet", "gateway")}, "exists": network is not None,
           "found_subnet": found_subnet if network else None,
           "found_gateway": found_gw if network else None}
    net["ok"] = bool(network) and found_subnet == want["subnet"] and found_gw == want["gateway"]
    by_name = {}
    for c in containers:
        for name in _names(c):
            by_name.setdefault(name, c)
    members = []
    for m in config["members"]:
        c = by_name.get(m["container"])
        ep = _endpoint(c, want["name"]) if c else None
        ip = (ep or {}).get("IPAddress") or None
        state = c.get("State") if c else None
        if c is None:
            status = "missing"
        elif state not in RUNNING:
            status, ip = "stopped", None  # a stopped container holds no address
        elif ep is None or ip is None:
            status = "detached"
        elif ip != m["ip"]:
            status = "wrong_ip"
        else:
            status = "ok"
        members.append({"service": m.get("service", m["container"]), "container": m["container"],
                        "expected_ip": m["ip"], "state": state, "status": status, "ip": ip,
                        "fixed": False, "error": None, "_id": (c or {}).get("Id"),
                        "_aliases": _aliases(c, ep)})
    return {"network": net, "members": members}


def _aliases(container: dict | None, ep: dict | None) -> list[str]:
    """Aliases to keep when reconnecting: the endpoint's own (minus the short id Docker adds
    by itself) or, for a detached compose container, its service name as compose sets it."""
    if not container:
        return []
    short = (container.get("Id") or "")[:12]
    if ep and ep.get("Aliases"):
        return [a for a in ep["Aliases"] if a != short]
    service = (container.get("Labels") or {}).get("com.docker.compose.service")
    return [service] if service else []


def fix(docker: Docker, report: dict) -> None:
    """Reconnect detached members and move wrong_ip ones, recording the outcome."""
    net = report["network"]
    name = quote(net["name"], safe="")
    for m in report["members"]:
        if m["status"] not in ("detached", "wrong_ip"):
            continue
        if not net["ok"]:
            m["error"] = (f"network {net['name']} is missing" if not net["exists"] else
                          f"network {net['name']} has subnet {net['found_subnet']}, "
                          f"not {net['subnet']}")
            continue
        endpoint = {"IPAMConfig": {"IPv4Address": m["expected_ip"]}}
        try:
            if m["status"] == "wrong_ip":
                # The container list leaves the aliases out; inspect has them.
                full = docker.get(f"/containers/{m['_id']}/json") or {}
                m["_aliases"] = _aliases(full, _endpoint(full, net["name"]))
            if m["_aliases"]:
                endpoint["Aliases"] = m["_aliases"]
            if m["status"] == "wrong_ip":
                docker.post(f"/networks/{name}/disconnect", {"Container": m["_id"]})
            try:
                docker.post(f"/networks/{name}/connect",
                            {"Container": m["_id"], "EndpointConfig": endpoint})
            except DockerError:
                if m["status"] == "wrong_ip":  # put it back where it was rather than nowhere
                    back = {**endpoint, "IPAMConfig": {"IPv4Address": m["ip"]}}
                    try:
                        docker.post(f"/networks/{name}/connect",
                                    {"Container": m["_id"], "EndpointConfig": back})
                    except DockerError:
                        pass
                raise
        except DockerError as e:
            m["error"] = str(e)
            continue
        now = _endpoint(docker.get(f"/containers/{m['_id']}/json") or {}, net["name"])
        m["fixed"] = (now or {}).get("IPAddress") == m["expected_ip"]
        if not m["fixed"]:
            m["error"] = f"Docker reports {(now or {}).get('IPAddress') or 'no address'} after connect"


def finish(report: dict, fixing: bool) -> dict:
    """Counts, status and exit code; drops the private fields."""
    members = report["members"]
    for m in members:
        m.pop("_id", None)
        m.pop("_aliases", None)
    counts = {s: sum(1 for m in members if m["status"] == s) for s in STATUSES}
    counts["fixed"] = sum(1 for m in members if m["fixed"])
    found = counts["ok"] < len(members) or not report["network"]["ok"]
    remaining = not report["network"]["ok"] or any(
        m["status"] != "ok" and not m["fixed"] for m in members)
    code = 1 if remaining else 2 if found else 0
    report.update(status={0: "healthy", 1: "problems", 2: "fixed"}[code], exit_code=code,
                  fix=fixing, counts=counts, error=None)
    return report


def unchecked(error: str, fixing: bool) -> dict:
    return {"status": "unchecked", "exit_code": 3, "fix": fixing, "error": error,
            "network": None, "members": [], "counts": {}}


def run_check(docker: Docker, members_path: str, fixing: bool) -> dict:
    try:
        config = load_members(members_path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return unchecked(f"cannot read members file {members_path}: {e}", fixing)
    try:
        network = docker.get(f"/networks/{quote(config['network']['name'], safe='')}")
        containers = docker.get("/containers/json?all=1") or []
        report = evaluate(config, network, containers)
        if fixing:
            fix(docker, report)
    except Unavailable as e:
        return unchecked(str(e), fixing)
    return finish(report, fixing)


def render(report: dict) -> str:
    """The report as text for people and the journal."""
    if report["status"] == "unchecked":
        return f"could not check: {report['error']} (exit 3)"
    net = report["network"]
    lines = [f"network {net['name']} {net['subnet']} gw {net['gateway']}: " + (
        "ok" if net["ok"] else "MISSING" if not net["exists"] else
        f"WRONG (found subnet {net['found_subnet']} gw {net['found_gateway']})")]
    for m in report["members"]:
        where = {"ok": f"at {m['ip']}", "missing": "no such container",
                 "stopped": f"not running ({m['state']}); its unit starts it",
                 "detached": "running but not attached",
                 "wrong_ip": f"attached at {m['ip']}"}[m["status"]]
        after = ""
        if m["fixed"]:
            after = f" -> reconnected at {m['expected_ip']}"
        elif m["error"]:
            after = f" -> fix failed: {m['error']}"
        lines.append(f"  {m['status'].upper() if m['status'] != 'ok' else 'ok':9} "
                     f"{m['container']} (expected {m['expected_ip']}): {where}{after}")
    c = report["counts"]
    lines.append(f"{len(report['members'])} members: " + ", ".join(
        f"{c[k]} {k}" for k in (*STATUSES, "fixed") if c[k]) + f" -> {report['status']} "
        f"(exit {report['exit_code']})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- disk guard

PRUNES = [  # (kind, Engine API call): what `docker system prune` does, minus networks
    ("containers", "/containers/prune"),
    ("images", "/images/prune"),
    ("build cache", "/build/prune"),
]


def usage_percent(path: str) -> int:
    """Used space as df(1) reports it: used / (used + available to users), rounded up."""
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    total = used + avail
    return -(-used * 100 // total) if total else 0


def prune_calls(all_images: bool, volumes: bool) -> list[tuple[str, str]]:
    calls = []
    for kind, path in PRUNES:
        if kind == "images" and all_images:
            path += "?filters=" + quote(json.dumps({"dangling": ["false"]}))
        calls.append((kind, path))
    if volumes:
        calls.append(("volumes", "/volumes/prune"))
    return calls


def human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return str(n)


def disk_guard(docker: Docker, threshold: int, all_images: bool, volumes: bool) -> dict:
    out = {"root": None, "percent": None, "threshold": threshold, "pruned": False,
           "reclaimed": {}, "percent_after": None, "exit_code": 0, "error": None}
    try:
        info = docker.get("/info") or {}
        out["root"] = info.get("DockerRootDir") or "/var/lib/docker"
        out["percent"] = out["percent_after"] = usage_percent(out["root"])
        if out["percent"] < threshold:
            return out
        out["pruned"] = True
        errors = []
        for kind, path in prune_calls(all_images, volumes):
            try:
                answer = docker.post(path, timeout=600) or {}
                out["reclaimed"][kind] = int(answer.get("SpaceReclaimed") or 0)
            except DockerError as e:
                errors.append(f"{kind}: {e}")
        out["percent_after"] = usage_percent(out["root"])
    except Unavailable as e:
        out.update(exit_code=3, error=str(e))
        return out
    except OSError as e:
        out.update(exit_code=3, error=f"cannot read usage of {out['root']}: {e}")
        return out
    if errors:
        out.update(exit_code=1, error="prune failed: " + "; ".join(errors))
    elif out["percent_after"] >= threshold:
        out.update(exit_code=1, error=f"still {out['percent_after']}% used after pruning")
    return out


def render_disk(d: dict) -> str:
    if d["percent"] is None:
        return f"disk: could not check: {d['error']} (exit {d['exit_code']})"
    head = f"disk: {d['percent']}% of {d['root']} used (threshold {d['threshold']}%)"
    if not d["pruned"]:
        return f"{head}: nothing to prune"
    freed = ", ".join(f"{k} {human(v)}" for k, v in d["reclaimed"].items()) or "nothing"
    line = f"{head}: pruned, reclaimed {freed}; now {d['percent_after']}%"
    return line + (f"; {d['error']} (exit {d['exit_code']})" if d["error"] else "")


# ---------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", default=DEFAULT_MEMBERS, help="expected members (JSON)")
    p.add_argument("--fix", action="store_true", help="reconnect detached members")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.add_argument("--disk-guard", action="store_true", help="check disk usage, prune above PCT")
    p.add_argument("--threshold", type=int, default=85, metavar="PCT")
    p.add_argument("--all-images", action="store_true", help="prune all unused images")
    p.add_argument("--volumes", action="store_true", help="also prune unused volumes (data!)")
    args = p.parse_args(argv)
    docker = Docker()
    if args.disk_guard:
        result = disk_guard(docker, args.threshold, args.all_images, args.volumes)
        print(json.dumps(result, indent=2) if args.json else render_disk(result), flush=True)
        return result["exit_code"]
    report = run_check(docker, args.members, args.fix)
    if args.json:
        report["checked_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print(json.dumps(report, indent=2), flush=True)
    else:
        print(render(report), flush=True)
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
