"""Docker's disk in the deploy: the usage fact and the prune operation, both through the
host's disk guard (files/disk_guard.py, the one implementation of the rule).

The seed freed disk by hand after "no space left on device" with `docker system prune -a -f`
and `docker volume prune -f`. The second deletes data (every volume no container uses at
that moment, a stopped database's included), so volumes are pruned only when the data asks;
networks never (`docker system prune` deletes watchme-network whenever the services are
stopped), and no registry service's stopped container, nor one stopped < 10 minutes ago.
"""

from __future__ import annotations

import json
import shlex

from pyinfra import host, logger
from pyinfra.api import FactBase, FunctionCommand, operation

from watchme import remote
from watchme.fact_batch import Call


class DockerDiskUsage(FactBase):
    """disk_guard.py --check --json: {"root", "percent", "threshold", ...} of the filesystem
    holding Docker's data root; None when the guard is not installed yet or Docker does not
    answer (a new server before the bootstrap installed it)."""

    def call(self, script: str, threshold: int) -> Call:
        # exit 1 (at or above the threshold) is an answer, not a failed fact
        return Call(script=script, argv=["--check", "--json", "--threshold", int(threshold)],
                    tolerant=True)

    def command(self, script: str, threshold: int) -> str:
        return self.call(script, threshold).command()

    def process(self, output):
        try:
            usage = json.loads("\n".join(output))
        except ValueError:
            return None
        return usage if usage.get("percent") is not None else None


def guard_command(script: str, members: str, threshold: int, all_images: bool = False,
                  volumes: bool = False) -> str:
    return (f"python3 {shlex.quote(script)} --json --threshold {int(threshold)} "
            f"--members {shlex.quote(members)}"
            + (" --all-images" if all_images else "") + (" --volumes" if volumes else ""))


def outcome(lines: list[str]) -> tuple[bool, str]:
    """(ok, line to print) from the guard's --json answer. Still full after pruning is a
    warning (something else fills the disk); a failed prune or no answer fails the deploy."""
    try:
        d = json.loads("\n".join(lines))
    except ValueError:
        return False, "disk guard gave no report: " + " ".join(lines)[-300:]
    freed = ", ".join(f"{k} {v // 1_000_000}MB" for k, v in d["reclaimed"].items()) or "nothing"
    line = (f"disk: {d['percent']}% of {d['root']} used (threshold {d['threshold']}%): pruned, "
            f"reclaimed {freed}; now {d['percent_after']}%")
    if d["removed"]:
        line += f"; removed {', '.join(d['removed'])}"
    if d["kept"]:
        line += "; kept " + ", ".join(f"{n} ({why})" for n, why in d["kept"])
    error = d.get("error") or ""
    return not error.startswith(("prune failed", "Docker")) and d["exit_code"] != 3, \
        line + (f"; {error}" if error else "")


def _prune_and_report(state, host, command: str) -> bool:
    _, out, err = remote.run(state, host, command)
    ok, line = outcome(out)
    (logger.warning if ok else logger.error)(f"{host.print_prefix}{line}"
                                             + ("" if ok else " " + " ".join(err)[-300:]))
    return ok


@operation()
def docker_prune(script: str, members: str, threshold: int, all_images: bool = False,
                 volumes: bool = False):
    """Prune Docker (disk_guard.py) when its filesystem is at least threshold % full; report
    what was reclaimed. Below the threshold (or without Docker) nothing runs."""
    usage = host.get_fact(DockerDiskUsage, script=script, threshold=threshold)
    if usage is None:
        host.noop("disk: the disk guard cannot look yet (new host); the timer's guard will")
        return
    if usage["percent"] < threshold:
        host.noop(f"disk: {usage['percent']}% of {usage['root']} used, below the "
                  f"{threshold}% threshold; nothing to prune")
        return
    yield FunctionCommand(_prune_and_report,
                          (guard_command(script, members, threshold, all_images, volumes),), {})
