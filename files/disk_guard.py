#!/usr/bin/env python3
"""WatchMe disk guard: prune Docker when the disk holding its data root is nearly full
(standard library only; installed in {config_root}/scripts, run by check-infrastructure.sh).

    disk_guard.py --check [--threshold PCT] [--json]      usage only, changes nothing
    disk_guard.py [--threshold PCT] [--all-images] [--volumes] [--members FILE]
                  [--min-age SECONDS] [--json]           prune when at or above PCT

Usage is read like df(1) (os.statvfs of `docker info`'s DockerRootDir). At or above PCT
(default 85) it frees what `docker system prune -f` would, with three exceptions:
  * containers are removed one by one, never one of the registry's services (FILE, default
    ../monitor/members.json) and never one stopped less than --min-age (default 600 s) ago:
    a unit restarting it, or an operator reading its logs, still needs it; anonymous
    volumes stay (v=0);
  * networks are never pruned: `docker system prune` deletes every network without a
    running container, watchme-network included whenever the services are stopped;
  * volumes only with --volumes (they hold data: a stopped service's database).
Then dangling images (all unused ones with --all-images) and the build cache.

Exit codes: 0 below PCT, or pruned back below it (--check: below PCT); 1 a prune failed or
usage is still at or above PCT (--check: at or above PCT); 3 Docker not answering.
--json: {"root", "percent", "threshold", "pruned", "removed" [container names], "kept"
[[name, why]], "reclaimed" {kind: bytes}, "percent_after", "exit_code", "error"}.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import sys
import time
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from docker_api import Docker, DockerError, Unavailable, read_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MEMBERS = os.path.join(os.path.dirname(HERE), "monitor", "members.json")
STOPPED = ["exited", "created", "dead"]
MIN_AGE = 600


def usage_percent(path: str) -> int:
    """Used space as df(1) reports it: used / (used + available to users), rounded up."""
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    total = used + avail
    return -(-used * 100 // total) if total else 0


def parse_time(value: str | None) -> float | None:
    """Docker's RFC 3339 time (nanoseconds, Z) as epoch seconds; None for its zero time."""
    if not value or value.startswith("0001-"):
        return None
    try:
        return calendar.timegm(time.strptime(value[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def prunable(full: dict, keep: set[str], now: float, min_age: float) -> tuple[bool, str]:
    """Whether the guard may remove this stopped container (its inspect answer), and why not."""
    name = (full.get("Name") or "").lstrip("/")
    state = full.get("State") or {}
    if state.get("Running") or state.get("Status") not in STOPPED:
        return False, f"{state.get('Status') or 'running'}"
    if name in keep:
        return False, "a registry service's container"
    stopped = parse_time(state.get("FinishedAt")) or parse_time(full.get("Created"))
    if stopped is None or now - stopped < min_age:
        return False, f"stopped less than {int(min_age // 60)} min ago"
    return True, ""


def registry_containers(path: str) -> set[str]:
    """Container names of every registry service (members.json); empty when unreadable:
    then no stopped container counts as a service's, so the 10-minute rule still holds."""
    config = read_json(path, {}) or {}
    return {m["container"] for m in config.get("members") or [] if isinstance(m, dict)}


def prune_calls(all_images: bool, volumes: bool) -> list[tuple[str, str]]:
    images = "/images/prune"
    if all_images:
        images += "?filters=" + quote(json.dumps({"dangling": ["false"]}))
    calls = [("images", images), ("build cache", "/build/prune")]
    if volumes:
        calls.append(("volumes", "/volumes/prune"))
    return calls


def remove_containers(docker: Docker, keep: set[str], min_age: float, out: dict,
                      now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    errors, freed = [], 0
    for c in docker.containers({"status": STOPPED}):
        full = docker.inspect(c["Id"])
        if full is None:
            continue
        name = (full.get("Name") or "").lstrip("/")
        ok, why = prunable(full, keep, now, min_age)
        if not ok:
            out["kept"].append([name, why])
            continue
        sized = docker.get(f"/containers/{c['Id']}/json?size=1") or {}
        try:
            docker.delete(f"/containers/{c['Id']}?v=0")
            out["removed"].append(name)
            freed += int(sized.get("SizeRw") or 0)
        except DockerError as e:
            errors.append(f"container {name}: {e}")
    out["reclaimed"]["containers"] = freed
    return errors


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return str(n)


def disk_guard(docker: Docker, threshold: int, all_images: bool = False, volumes: bool = False,
               keep: set[str] | None = None, min_age: float = MIN_AGE, check: bool = False) -> dict:
    out = {"root": None, "percent": None, "threshold": threshold, "pruned": False,
           "removed": [], "kept": [], "reclaimed": {}, "percent_after": None, "exit_code": 0,
           "error": None}
    errors: list[str] = []
    try:
        info = docker.info()
        out["root"] = info.get("DockerRootDir") or "/var/lib/docker"
        out["percent"] = out["percent_after"] = usage_percent(out["root"])
        if out["percent"] < threshold:
            return out
        if check:
            out.update(exit_code=1, error=f"{out['percent']}% used, at or above {threshold}%")
            return out
        out["pruned"] = True
        errors += remove_containers(docker, keep or set(), min_age, out)
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


def render(d: dict) -> str:
    if d["percent"] is None:
        return f"disk: could not check: {d['error']} (exit {d['exit_code']})"
    head = f"disk: {d['percent']}% of {d['root']} used (threshold {d['threshold']}%)"
    if not d["pruned"]:
        return f"{head}: " + (d["error"] if d["error"] else "nothing to prune")
    freed = ", ".join(f"{k} {human(v)}" for k, v in d["reclaimed"].items()) or "nothing"
    line = f"{head}: pruned, reclaimed {freed}; now {d['percent_after']}%"
    if d["removed"]:
        line += f"; removed {', '.join(d['removed'])}"
    if d["kept"]:
        line += "; kept " + ", ".join(f"{n} ({why})" for n, why in d["kept"])
    return line + (f"; {d['error']} (exit {d['exit_code']})" if d["error"] else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="report usage only, change nothing")
    p.add_argument("--threshold", type=int, default=85, metavar="PCT")
    p.add_argument("--all-images", action="store_true", help="prune all unused images")
    p.add_argument("--volumes", action="store_true", help="also prune unused volumes (data!)")
    p.add_argument("--members", default=DEFAULT_MEMBERS, help="registry containers (JSON)")
    p.add_argument("--min-age", type=float, default=MIN_AGE, metavar="SECONDS")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    args = p.parse_args(argv)
    result = disk_guard(Docker(), args.threshold, args.all_images, args.volumes,
                        registry_containers(args.members), args.min_age, args.check)
    print(json.dumps(result, indent=2) if args.json else render(result), flush=True)
    return result["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
