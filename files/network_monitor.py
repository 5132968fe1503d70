#!/usr/bin/env python3
"""WatchMe network check (the seed's scripts/network_monitor.py, rebuilt; stdlib only).

Installed by the deploy (tasks/guard.py) in {config_root}/scripts and run every 5 minutes by
watchme-guard.timer through check-infrastructure.sh. It asks the Docker Engine API on its
Unix socket (docker_api.py), a few GETs when all is well, so a run stays small and quick on
a host with ~400 MB free (bench/monitor_memory.sh measures it).

    network_monitor.py [--members FILE] [--check | --fix [--flap-window SECONDS]] [--json]

FILE (default: ../monitor/members.json next to this script, rendered from the registry):
    {"network": {"name", "subnet", "gateway"},
     "members": [{"service", "container", "ip" (null: membership only), "memory_limit" (bytes)}]}
Each member is one of
    ok        running and attached with its IP (any IP when the registry's ip is null)
    missing   no container of that name
    stopped   the container exists but is not running (exited, created, restarting, dead)
    detached  running but not attached to the network
    wrong_ip  attached with another IP
and, for every container that exists, its memory limit (HostConfig.Memory) is compared with
the registry's memory_limit ("memory_ok") and an OOM kill (State.OOMKilled or exit 137) is
reported with the limit the container really had ("oom_killed"). Those two are reported
(text, JSON, `watchme doctor`) but do not change the exit code: the guard cannot fix them.

--check (the default) changes nothing at all. --fix first finishes an interrupted network
repair (network_repair.py's journal), then reconnects `detached` members with their IP and
moves `wrong_ip` members (disconnect, connect with the IP, same aliases). With
--flap-window SECONDS (the guard: 3600) a container that was reconnected less than that long
ago is not reconnected again: it is reported as flapping (something keeps taking it off,
e.g. compose recreating it without its fixed IP). Reconnects are recorded in
/var/lib/watchme/guard-reconnects.json. It never starts a container (the units' job), and
fixes nothing while the network itself is missing or has another subnet.

Exit codes:
    0  healthy: the network is right and every member is ok
    1  problems remain (missing, stopped, flapping, everything found with --check), so
       watchme-guard.service fails and shows in `systemctl --failed`
    2  problems were found and --fix repaired all of them (the guard counts this as success)
    3  could not check: Docker not answering, or the members file missing or unreadable

--json prints one object:
    status      "healthy" | "fixed" | "problems" | "unchecked" (exit codes 0, 2, 1, 3)
    exit_code, fix (bool), checked_at (UTC ISO 8601), error (why unchecked, else null)
    repair      log lines of a finished interrupted repair, else null
    network     {"name", "subnet", "gateway", "exists", "found_subnet", "found_gateway", "ok"}
    members     per member, in file order: "service", "container", "expected_ip", "state",
                "status", "ip" (before any fix), "fixed", "flapping", "error",
                "memory_limit" (registry, bytes or null), "memory" (HostConfig.Memory, 0 =
                unlimited, null when missing), "memory_ok" (null when not comparable),
                "oom_killed" (bool), "exit_code" (Docker's State.ExitCode or null)
    counts      {"ok", "missing", "stopped", "detached", "wrong_ip", "fixed", "flapping",
                 "memory_mismatch", "oom_killed"}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from docker_api import (Docker, DockerError, Unavailable, aliases, endpoint,  # noqa: E402
                        read_json, utc_now, write_json)
import network_repair  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MEMBERS = os.path.join(os.path.dirname(HERE), "monitor", "members.json")
RECONNECTS = os.environ.get("WATCHME_RECONNECTS", "/var/lib/watchme/guard-reconnects.json")
STATUSES = ("ok", "missing", "stopped", "detached", "wrong_ip")
RUNNING = ("running", "paused")  # a paused container keeps its network endpoint


def load_members(path: str) -> dict:
    with open(path) as f:
        config = json.load(f)
    net = config["network"]
    for key in ("name", "subnet", "gateway"):
        if not isinstance(net.get(key), str):
            raise ValueError(f"network.{key} is missing")
    for i, m in enumerate(config["members"]):
        if not isinstance(m.get("container"), str) or not isinstance(m.get("ip"), (str, type(None))):
            raise ValueError(f"members[{i}] needs container and ip (a string or null)")
    return config


def _names(container: dict) -> list[str]:
    return [n.lstrip("/") for n in container.get("Names") or []]


def memory_fields(want: int | None, full: dict | None) -> dict:
    """The member's memory row from its inspect answer (None: no such container)."""
    if full is None:
        return {"memory_limit": want, "memory": None, "memory_ok": None, "oom_killed": False,
                "exit_code": None}
    state = full.get("State") or {}
    memory = int((full.get("HostConfig") or {}).get("Memory") or 0)
    exit_code = state.get("ExitCode")
    running = state.get("Running") or state.get("Status") in RUNNING
    return {"memory_limit": want, "memory": memory,
            "memory_ok": None if want is None else memory == want,
            # exit 137 is SIGKILL: the OOM killer (or `docker kill`) while it ran
            "oom_killed": not running and (bool(state.get("OOMKilled")) or exit_code == 137),
            "exit_code": exit_code}


def evaluate(config: dict, network: dict | None, containers: list[dict],
             inspected: dict[str, dict] | None = None) -> dict:
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
        ep = endpoint(c, want["name"]) if c else None
        ip = (ep or {}).get("IPAddress") or None
        state = c.get("State") if c else None
        if c is None:
            status = "missing"
        elif state not in RUNNING:
            status, ip = "stopped", None  # a stopped container holds no address
        elif ep is None or ip is None:
            status = "detached"
        elif m["ip"] is not None and ip != m["ip"]:
            status = "wrong_ip"
        else:
            status = "ok"
        full = (inspected or {}).get((c or {}).get("Id")) if c else None
        members.append({"service": m.get("service", m["container"]), "container": m["container"],
                        "expected_ip": m["ip"], "state": state, "status": status, "ip": ip,
                        "fixed": False, "flapping": False, "error": None,
                        **memory_fields(m.get("memory_limit"), full if c else None),
                        "_id": (c or {}).get("Id"), "_aliases": aliases(c, ep)})
    return {"network": net, "members": members, "repair": None}


def flapping(last: float | None, now: float, window: float) -> bool:
    """Whether a reconnect now would be the second within window seconds."""
    return bool(window) and last is not None and now - last < window


def fix(docker: Docker, report: dict, window: float = 0, reconnects: dict | None = None,
        now: float | None = None) -> None:
    """Reconnect detached members and move wrong_ip ones, recording the outcome (and each
    reconnect's time in reconnects)."""
    net = report["network"]
    name = quote(net["name"], safe="")
    reconnects = {} if reconnects is None else reconnects
    now = time.time() if now is None else now
    for m in report["members"]:
        if m["status"] not in ("detached", "wrong_ip"):
            continue
        if not net["ok"]:
            m["error"] = (f"network {net['name']} is missing" if not net["exists"] else
                          f"network {net['name']} has subnet {net['found_subnet']}, "
                          f"not {net['subnet']}")
            continue
        last = reconnects.get(m["container"])
        if flapping(last, now, window):
            m["flapping"] = True
            m["error"] = (f"flapping: already reconnected {int((now - last) // 60)} min ago; "
                          f"not again within {int(window // 60)} min (find what takes it off: "
                          "a compose file without its fixed ipv4_address?)")
            continue
        endpoint_config = {}
        if m["expected_ip"]:
            endpoint_config["IPAMConfig"] = {"IPv4Address": m["expected_ip"]}
        try:
            if m["status"] == "wrong_ip":
                # The container list leaves the aliases out; inspect has them.
                full = docker.inspect(m["_id"]) or {}
                m["_aliases"] = aliases(full, endpoint(full, net["name"]))
            if m["_aliases"]:
                endpoint_config["Aliases"] = m["_aliases"]
            if m["status"] == "wrong_ip":
                docker.post(f"/networks/{name}/disconnect", {"Container": m["_id"]})
            try:
                docker.post(f"/networks/{name}/connect",
                            {"Container": m["_id"], "EndpointConfig": endpoint_config})
            except DockerError:
                if m["status"] == "wrong_ip":  # put it back where it was rather than nowhere
                    back = {**endpoint_config, "IPAMConfig": {"IPv4Address": m["ip"]}}
                    try:
                        docker.post(f"/networks/{name}/connect",
                                    {"Container": m["_id"], "EndpointConfig": back})
                    except DockerError:
                        pass
                raise
        except DockerError as e:
            m["error"] = str(e)
            continue
        reconnects[m["container"]] = now
        now_ip = (endpoint(docker.inspect(m["_id"]) or {}, net["name"]) or {}).get("IPAddress")
        m["fixed"] = bool(now_ip) and (m["expected_ip"] is None or now_ip == m["expected_ip"])
        if not m["fixed"]:
            m["error"] = f"Docker reports {now_ip or 'no address'} after connect"


def finish(report: dict, fixing: bool) -> dict:
    """Counts, status and exit code; drops the private fields."""
    members = report["members"]
    for m in members:
        m.pop("_id", None)
        m.pop("_aliases", None)
    counts = {s: sum(1 for m in members if m["status"] == s) for s in STATUSES}
    counts["fixed"] = sum(1 for m in members if m["fixed"])
    counts["flapping"] = sum(1 for m in members if m["flapping"])
    counts["memory_mismatch"] = sum(1 for m in members if m["memory_ok"] is False)
    counts["oom_killed"] = sum(1 for m in members if m["oom_killed"])
    found = counts["ok"] < len(members) or not report["network"]["ok"]
    remaining = not report["network"]["ok"] or any(
        m["status"] != "ok" and not m["fixed"] for m in members)
    code = 1 if remaining else 2 if found else 0
    report.update(status={0: "healthy", 1: "problems", 2: "fixed"}[code], exit_code=code,
                  fix=fixing, counts=counts, error=None)
    return report


def unchecked(error: str, fixing: bool) -> dict:
    return {"status": "unchecked", "exit_code": 3, "fix": fixing, "error": error,
            "network": None, "members": [], "counts": {}, "repair": None}


def run_check(docker: Docker, members_path: str, fixing: bool, window: float = 0) -> dict:
    try:
        config = load_members(members_path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return unchecked(f"cannot read members file {members_path}: {e}", fixing)
    repair = None
    try:
        if fixing and read_json(network_repair.JOURNAL):
            repair = []  # an interrupted repair is finished before anything else
            errors = network_repair.finish(docker, read_json(network_repair.JOURNAL), repair.append)
            repair += [f"repair incomplete: {e}" for e in errors]
        network = docker.network(config["network"]["name"])
        containers = docker.containers()
        wanted = {m["container"] for m in config["members"]}
        inspected = {c["Id"]: docker.inspect(c["Id"]) for c in containers
                     if set(_names(c)) & wanted}
        report = evaluate(config, network, containers, inspected)
        report["repair"] = repair
        if fixing:
            reconnects = read_json(RECONNECTS, {}) or {}
            before = dict(reconnects)
            fix(docker, report, window, reconnects)
            if reconnects != before:
                write_json(RECONNECTS, reconnects)
    except (Unavailable, DockerError) as e:
        return unchecked(str(e), fixing)
    return finish(report, fixing)


def size(n: int | None) -> str:
    """Bytes as Docker's memory flags spell them: 1g, 512m; 0 is unlimited."""
    if n is None:
        return "?"
    if n == 0:
        return "unlimited"
    for unit, factor in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}b"


def render(report: dict) -> str:
    """The report as text for people and the journal."""
    if report["status"] == "unchecked":
        return f"could not check: {report['error']} (exit 3)"
    lines = [f"finished an interrupted network repair: {line}" for line in report.get("repair") or []]
    net = report["network"]
    lines.append(f"network {net['name']} {net['subnet']} gw {net['gateway']}: " + (
        "ok" if net["ok"] else "MISSING" if not net["exists"] else
        f"WRONG (found subnet {net['found_subnet']} gw {net['found_gateway']})"))
    for m in report["members"]:
        where = {"ok": f"at {m['ip']}", "missing": "no such container",
                 "stopped": f"not running ({m['state']}); its unit starts it",
                 "detached": "running but not attached",
                 "wrong_ip": f"attached at {m['ip']}"}[m["status"]]
        after = ""
        if m["fixed"]:
            after = f" -> reconnected at {m['expected_ip'] or 'a dynamic address'}"
        elif m["error"]:
            after = f" -> {'' if m['flapping'] else 'fix failed: '}{m['error']}"
        label = "FLAPPING" if m["flapping"] else m["status"].upper() if m["status"] != "ok" else "ok"
        lines.append(f"  {label:9} {m['container']} (expected {m['expected_ip'] or 'any IP'}): "
                     f"{where}{after}")
        if m["memory_ok"] is False:
            lines.append(f"  MEMORY    {m['container']}: limit {size(m['memory'])}, registry "
                         f"memory_limit {size(m['memory_limit'])}")
        if m["oom_killed"]:
            lines.append(f"  OOM       {m['container']}: killed (exit {m['exit_code']}, "
                         f"OOM killer) with a limit of {size(m['memory'])}")
    c = report["counts"]
    lines.append(f"{len(report['members'])} members: " + ", ".join(
        f"{c[k]} {k}" for k in (*STATUSES, "fixed", "flapping", "memory_mismatch", "oom_killed")
        if c[k]) + f" -> {report['status']} (exit {report['exit_code']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", default=DEFAULT_MEMBERS, help="expected members (JSON)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="read only, change nothing (default)")
    mode.add_argument("--fix", action="store_true", help="reconnect detached members")
    p.add_argument("--flap-window", type=float, default=0, metavar="SECONDS",
                   help="with --fix: reconnect a container at most once per SECONDS")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    args = p.parse_args(argv)
    report = run_check(Docker(), args.members, args.fix, args.flap_window)
    if args.json:
        report["checked_at"] = utc_now()
        print(json.dumps(report, indent=2), flush=True)
    else:
        print(render(report), flush=True)
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
