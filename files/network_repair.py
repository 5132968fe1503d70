#!/usr/bin/env python3
"""watchme-network itself: read it, create it, and repair a drifted one without losing a
container (standard library only; installed in {config_root}/scripts).

    network_repair.py --name N [--driver D --subnet S --gateway G --ip-range R] [--json]
        read-only (--check is implied): the network's driver/subnet/gateway/ip-range, every
        container attached to it (running or stopped) with its IP and aliases, the drift from
        the wanted values, an unfinished repair journal, and the report people read (the
        deploy's error, the unit's journal, `watchme doctor`). The deploy's DockerNetwork fact.
    network_repair.py --ensure --name N --driver D --subnet S --gateway G [--ip-range R]
                      [--repair] [--fixed-ip CONTAINER=IP ...] [--json]
                      [--encrypted] [--anchor IMAGE]
        first finishes an interrupted repair (the journal), then creates the network when it
        is missing; a drifted network is an error unless --repair. The deploy's network
        operation and watchme-infrastructure.service both run this.

--ip-range R (issue 12 section 4): Docker picks the address of a container started without a
fixed IP (a rollout candidate, a service whose registry ip is null) from R only, and the
registry refuses fixed IPs inside R, so a dynamic address can never take the fixed IP of a
stopped service. A new network gets it. An existing one without it (the production network,
made by hand with only --subnet/--gateway) still works: that is reported as "outdated", not
drift, so nothing fails and nothing is recreated until --repair is asked for (a maintenance
window: every container loses the network for a moment).

A repair writes its journal (/var/lib/watchme/network-repair.json: the wanted network and
every attached container with the IP it gets back and its aliases) BEFORE it disconnects
anything, and removes it only when every container is back. A run killed in the middle
leaves the journal; the next --ensure (deploy or unit) or `network_monitor.py --fix` (guard)
finishes it first, so no container stays off the network.

Driver overlay (issue 14, several hosts): the network is an attachable swarm overlay, created
on the swarm manager (with --ip-range like a bridge). A worker cannot create it and does not even see it until one of its own
containers is attached, so --anchor IMAGE keeps a tiny container (watchme-network-anchor)
attached on every host: on a worker that is what "create" means, and compose's
`external: true` then finds the network.

Exit codes: 0 as wanted (created, repaired or already right; also outdated without --repair:
it works); 1 drifted without --repair, or
a container could not be put back (the journal stays for the next run); 3 Docker is not
answering.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from docker_api import (Docker, DockerError, Unavailable, aliases, endpoint,  # noqa: E402
                        read_json, utc_now, write_json)

JOURNAL = os.environ.get("WATCHME_REPAIR_JOURNAL", "/var/lib/watchme/network-repair.json")


def default_gateway(subnet: str) -> str:
    """The gateway Docker uses when none is given: the subnet's first host address."""
    try:
        return str(next(ipaddress.ip_network(subnet, strict=False).hosts()))
    except (ValueError, StopIteration):
        return ""


def describe(network: dict | None) -> dict | None:
    """{"name", "driver", "subnet", "gateway", "ip_range", "labels"} of an API network, None
    if missing."""
    if network is None:
        return None
    first = (((network.get("IPAM") or {}).get("Config")) or [{}])[0]
    subnet = first.get("Subnet", "")
    return {"name": network.get("Name", ""), "driver": network.get("Driver", ""),
            "subnet": subnet, "scope": network.get("Scope", ""),
            "attachable": bool(network.get("Attachable")),
            # Created without --gateway, Docker records none and uses the first address.
            "gateway": first.get("Gateway") or default_gateway(subnet),
            "ip_range": first.get("IPRange") or "",
            "labels": network.get("Labels") or {}}


def drift(found: dict | None, want: dict) -> list[list[str]]:
    """[field, wanted, found] for every setting that differs (none for a missing network)."""
    if found is None:
        return []
    return [[k, want[k], found[k] or "(none)"] for k in ("driver", "subnet", "gateway")
            if want.get(k) and found[k] != want[k]]


def outdated(found: dict | None, want: dict) -> list[list[str]]:
    """[["ip_range", wanted, found]] when the network's range for dynamic addresses is not
    the wanted one. Not drift: the network works as it is (see the docstring)."""
    if found is None or not want.get("ip_range") or found["ip_range"] == want["ip_range"]:
        return []
    return [["ip_range", want["ip_range"], found["ip_range"] or "(none)"]]


def attached(docker: Docker, name: str) -> list[dict]:
    """Every container attached to the network, running or stopped, with IP and aliases."""
    out = []
    for c in docker.containers({"network": [name]}):
        full = docker.inspect(c["Id"]) or c
        ep = endpoint(full, name) or {}
        static = (ep.get("IPAMConfig") or {}).get("IPv4Address") or ""
        out.append({"name": ((full.get("Name") or "") or (c.get("Names") or [""])[0]).lstrip("/"),
                    "ip": static or ep.get("IPAddress") or "",
                    "aliases": aliases(full, ep),
                    "running": bool((full.get("State") or {}).get("Running")
                                    if isinstance(full.get("State"), dict)
                                    else c.get("State") == "running")})
    return sorted(out, key=lambda c: c["name"])


def inspect(docker: Docker, want: dict, anchor: str = "") -> dict:
    found = describe(docker.network(want["name"]))
    out = {"exists": found is not None, "network": found,
           "containers": attached(docker, want["name"]) if found else [],
           "drift": drift(found, want), "outdated": outdated(found, want),
           "journal": read_json(JOURNAL)}
    out["report"] = report(out, want)
    if anchor:
        out["anchor"] = anchor_state(docker, want["name"])
    return out


def repair_ip(container: dict, subnet: str, fixed_ips: dict[str, str]) -> str:
    """The IP a container gets back: the registry's, else its own if it fits the new subnet,
    else '' (Docker picks one)."""
    net = ipaddress.ip_network(subnet)
    for ip in (fixed_ips.get(container["name"], ""), container["ip"].split("/")[0]):
        if ip and ipaddress.ip_address(ip) in net:
            return ip
    return ""


def plan(want: dict, containers: list[dict], fixed_ips: dict[str, str]) -> dict:
    """The journal: what the repair makes, written before the first disconnect."""
    return {"network": want, "started": utc_now(),
            "containers": [{"name": c["name"], "ip": repair_ip(c, want["subnet"], fixed_ips),
                            "aliases": c["aliases"]} for c in containers]}


def create_body(want: dict) -> dict:
    ipam = {"Subnet": want["subnet"], "Gateway": want["gateway"]}
    body = {"Name": want["name"], "Driver": want["driver"], "CheckDuplicate": True}
    if want.get("ip_range"):
        ipam["IPRange"] = want["ip_range"]  # dynamic addresses only from here
    if want["driver"] == "overlay":
        # attachable: plain containers (compose, the anchor) join it, not only swarm services
        body["Attachable"] = True
        if want.get("encrypted"):
            body["Options"] = {"encrypted": ""}
    body["IPAM"] = {"Config": [ipam]}
    return body


ANCHOR = "watchme-network-anchor"


def swarm_worker(docker: Docker) -> bool:
    """This engine is in a swarm but not a manager (it cannot create an overlay)."""
    swarm = docker.info().get("Swarm") or {}
    return swarm.get("LocalNodeState") == "active" and not swarm.get("ControlAvailable")


def anchor_state(docker: Docker, name: str) -> dict:
    """{"present", "running", "attached"} of the anchor container."""
    full = docker.inspect(ANCHOR)
    if full is None:
        return {"present": False, "running": False, "attached": False}
    return {"present": True, "running": bool((full.get("State") or {}).get("Running")),
            "attached": endpoint(full, name) is not None}


def ensure_anchor(docker: Docker, want: dict, image: str, log) -> None:
    """The anchor container, running and attached (restarted by Docker after a reboot)."""
    name = want["name"]
    found = anchor_state(docker, name)
    if not found["present"]:
        docker.post(f"/containers/create?name={ANCHOR}", {
            "Image": image, "Labels": {"watchme.anchor": name},
            # sleeps in the background so TERM ends it at once (no init in the image)
            "Cmd": ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"],
            "HostConfig": {"NetworkMode": name, "RestartPolicy": {"Name": "unless-stopped"},
                           "Memory": 16 * 1024 * 1024}})
        log(f"created {ANCHOR} on {name} (keeps the overlay visible to compose on this host)")
    elif not found["attached"]:
        docker.post(f"/networks/{name}/connect", {"Container": ANCHOR})
        log(f"attached {ANCHOR} to {name}")
    if not anchor_state(docker, name)["running"]:
        docker.post(f"/containers/{ANCHOR}/start")
        log(f"started {ANCHOR}")


def create(docker: Docker, want: dict, anchor: str, log) -> None:
    """Create the network; on a swarm worker the anchor's attachment is the creation."""
    if want["driver"] == "overlay" and swarm_worker(docker):
        if not anchor:
            raise DockerError("a swarm worker cannot create an overlay; pass --anchor IMAGE")
        ensure_anchor(docker, want, anchor, log)
        return
    docker.post("/networks/create", create_body(want))
    log(f"created {want['name']} ({want['driver']} {want['subnet']} gw {want['gateway']})")


def finish(docker: Docker, journal: dict, log, anchor: str = "") -> list[str]:
    """Carry out (or finish) a journalled repair; every step is safe to repeat. Returns the
    errors; the journal is removed only when there are none."""
    want, name = journal["network"], journal["network"]["name"]
    errors = []
    found = describe(docker.network(name))
    if found is not None and (drift(found, want) or outdated(found, want)):
        for c in journal["containers"]:
            try:
                docker.post(f"/networks/{name}/disconnect", {"Container": c["name"], "Force": True})
                log(f"disconnected {c['name']} from the old {name}")
            except DockerError:
                pass  # not attached any more (an earlier run got this far) or gone
        docker.delete(f"/networks/{name}")
        log(f"removed the old {name} ({found['subnet']} gw {found['gateway']})")
        found = None
    if found is None:
        create(docker, want, anchor, log)
    for c in journal["containers"]:
        full = docker.inspect(c["name"])
        if full is None:
            log(f"{c['name']} no longer exists: nothing to reconnect")
            continue
        ep = endpoint(full, name)
        if ep is not None:
            continue  # reconnected by an earlier run
        config = {"Aliases": c["aliases"]} if c["aliases"] else {}
        if c["ip"]:
            config["IPAMConfig"] = {"IPv4Address": c["ip"]}
        try:
            docker.post(f"/networks/{name}/connect", {"Container": c["name"], "EndpointConfig": config})
            log(f"reconnected {c['name']} at {c['ip'] or 'a dynamic address'}"
                + (f" with aliases {','.join(c['aliases'])}" if c["aliases"] else ""))
        except DockerError as e:
            errors.append(f"{c['name']}: {e}")
    if not errors:
        try:
            os.unlink(JOURNAL)
        except FileNotFoundError:
            pass
    return errors


def ensure(docker: Docker, want: dict, repair: bool, fixed_ips: dict[str, str], log,
           anchor: str = "") -> int:
    journal = read_json(JOURNAL)
    if journal:
        log(f"finishing the interrupted repair of {journal['network']['name']} "
            f"(journal {JOURNAL}, started {journal.get('started')})")
        errors = finish(docker, journal, log, anchor)
        if errors:
            log("repair incomplete: " + "; ".join(errors))
            return 1
    state = inspect(docker, want)
    if not state["exists"]:
        create(docker, want, anchor, log)
        state = inspect(docker, want)
    if not state["drift"] and not (repair and state["outdated"]):
        if state["outdated"]:
            log(state["report"])  # works as it is: told, not failed (the unit starts)
        if anchor and state["exists"]:
            ensure_anchor(docker, want, anchor, log)
        return 0
    if not repair:
        log(state["report"])
        return 1
    journal = plan(want, [c for c in state["containers"] if c["name"] != ANCHOR], fixed_ips)
    write_json(JOURNAL, journal)  # before anything is disconnected
    errors = finish(docker, journal, log, anchor)
    if not errors and anchor:
        ensure_anchor(docker, want, anchor, log)
    if errors:
        log("repair incomplete: " + "; ".join(errors))
    return 1 if errors else 0


FIX = ("rerun with --data network_repair=true to recreate it and reconnect these containers "
       "with their IPs and aliases (each loses the network for a moment)")
RANGE_CAUSE = ("a container started without a fixed IP (a rollout candidate, a service whose ip "
               "is null) can take the registry IP of a stopped service")


def report(state: dict, want: dict) -> str:
    """What differs, the attached containers and the fix, as the deploy, the infrastructure
    unit and `watchme doctor` print it (the one rendering); "" when nothing differs."""
    if not state["drift"] and not state["outdated"]:
        return ""
    if state["drift"]:
        lines = [f"{want['name']} differs from the wanted configuration:"]
    else:
        lines = [f"{want['name']} has no range of its own for dynamic addresses: {RANGE_CAUSE}:"]
    lines += [f"  {k:<8} wanted {w:<16} found {f}" for k, w, f in state["drift"] + state["outdated"]]
    cs = state["containers"]
    lines.append(f"  attached containers ({len(cs)}):" if cs else "  attached containers: none")
    for c in cs:
        extra = f" aliases {','.join(c['aliases'])}" if c["aliases"] else ""
        lines.append(f"    {c['name']:<28} {c['ip'] or '(dynamic)'}{extra}"
                     f"{'' if c['running'] else ' (stopped)'}")
    lines.append("  fix: " + ("" if state["drift"] else "in a maintenance window, ") + FIX)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--driver", default="")
    p.add_argument("--subnet", default="")
    p.add_argument("--gateway", default="")
    p.add_argument("--check", action="store_true", help="read only (the default)")
    p.add_argument("--ensure", action="store_true", help="create it / finish a repair")
    p.add_argument("--repair", action="store_true", help="recreate a drifted network")
    p.add_argument("--fixed-ip", action="append", default=[], metavar="CONTAINER=IP")
    p.add_argument("--json", action="store_true")
    p.add_argument("--ip-range", default="", help="where Docker picks dynamic addresses")
    p.add_argument("--encrypted", action="store_true", help="overlay: IPsec data plane")
    p.add_argument("--anchor", default="", metavar="IMAGE",
                   help=f"overlay: keep {ANCHOR} (from IMAGE) attached on this host")
    args = p.parse_args(argv)
    want = {"name": args.name, "driver": args.driver, "subnet": args.subnet, "gateway": args.gateway}
    if args.ensure and not args.check and not all(want.values()):
        p.error("--ensure needs --driver, --subnet and --gateway")
    want.update(ip_range=args.ip_range, encrypted=args.encrypted)
    docker = Docker()
    try:
        if args.ensure and not args.check:
            fixed = dict(f.split("=", 1) for f in args.fixed_ip)
            lines: list[str] = []
            code = ensure(docker, want, args.repair, fixed, lambda m: (lines.append(m), print(
                m, file=sys.stderr if args.json else sys.stdout, flush=True)), args.anchor)
            if args.json:
                print(json.dumps({"exit_code": code, "log": lines,
                                  **inspect(docker, want, args.anchor)}, indent=2))
            return code
        state = inspect(docker, want, args.anchor)
    except (Unavailable, DockerError) as e:
        print(json.dumps({"exit_code": 3, "error": str(e)}) if args.json else
              f"could not check: {e} (exit 3)")
        return 3
    print(json.dumps(state, indent=2) if args.json else state["report"] or
          f"{args.name}: " + ("missing" if not state["exists"] else "as wanted"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
