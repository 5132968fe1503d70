"""Docker's disk: the fact for the usage of the filesystem holding its data root, and the
operation that prunes only above a threshold.

The seed freed disk by hand after "no space left on device" with `docker system prune -a -f`
and `docker volume prune -f`. The second deletes data (every volume no container uses at
that moment, a stopped database's included), so volumes are pruned only when the data asks.
`docker system prune` itself is split into its parts without `docker network prune`: it
deletes every network with no running container, watchme-network included whenever the
services are stopped, after which no service can start (tests/test_disk.py shows it).
"""

from __future__ import annotations

import re

from pyinfra import host, logger
from pyinfra.api import FactBase, FunctionCommand, StringCommand, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS

RECLAIMED = re.compile(r"^Total(?: reclaimed space)?:\s*(\S+)")


class DockerDiskUsage(FactBase):
    """{"root", "percent", "size_kib", "used_kib", "avail_kib"} of the filesystem that holds
    `docker info`'s DockerRootDir, as `df -P` reports it; None when Docker does not answer
    (a new server before the bootstrap installed it)."""

    def requires_command(self, *args, **kwargs) -> str:
        return "docker"

    def command(self) -> str:
        return ("root=$(docker info -f '{{.DockerRootDir}}' 2>/dev/null) && [ -n \"$root\" ] && "
                "df -P \"$root\" | awk -v r=\"$root\" 'NR == 2 {print r, $2, $3, $4, $5}' || true")

    def process(self, output):
        for line in output:
            parts = line.split()
            if len(parts) == 5 and parts[4].endswith("%"):
                root, size, used, avail, pct = parts
                return {"root": root, "size_kib": int(size), "used_kib": int(used),
                        "avail_kib": int(avail), "percent": int(pct.rstrip("%"))}
        return None


def prune_commands(all_images: bool = False, volumes: bool = False) -> list[str]:
    """`docker system prune -f [-a]` without the network prune; volumes only when asked."""
    commands = ["docker container prune -f",
                "docker image prune -f" + (" -a" if all_images else ""),
                "docker builder prune -f"]
    if volumes:
        commands.append("docker volume prune -f")
    return commands


def remote(state, host, command: str) -> tuple[bool, list[str]]:
    """Run a shell command from a FunctionCommand with the current operation's connector
    arguments (sudo and so on); returns (success, stdout and stderr lines)."""
    op_data = state.get_op_data_for_host(host, host.executing_op_hash)
    kwargs = {k: v for k, v in op_data.global_arguments.items() if k in CONNECTOR_ARGUMENT_KEYS}
    ok, output = host.run_shell_command(StringCommand(command), **kwargs)
    return ok, [line.line for line in output]


def _prune_and_report(state, host, commands: list[str], before: dict, threshold: int) -> bool:
    freed = []
    for command in commands:
        ok, lines = remote(state, host, command)
        if not ok:
            logger.error(f"{host.print_prefix}disk: `{command}` failed: {' '.join(lines)[-500:]}")
            return False
        kind = command.split()[1]
        sizes = [m.group(1) for m in map(RECLAIMED.match, lines) if m]
        freed.append(f"{kind} {sizes[-1] if sizes else '0B'}")
    logger.warning(f"{host.print_prefix}disk: {before['percent']}% of {before['root']} used "
                   f"(threshold {threshold}%): pruned, reclaimed {', '.join(freed)}")
    return True


@operation()
def docker_prune(threshold: int, all_images: bool = False, volumes: bool = False):
    """Prune Docker when its filesystem is at least threshold % full; report the space
    reclaimed. Below the threshold (or without Docker) nothing runs and nothing changes."""
    usage = host.get_fact(DockerDiskUsage)
    if usage is None:
        host.noop("disk: Docker is not answering yet; nothing to prune")
        return
    if usage["percent"] < threshold:
        host.noop(f"disk: {usage['percent']}% of {usage['root']} used, below the "
                  f"{threshold}% threshold; nothing to prune")
        return
    yield FunctionCommand(_prune_and_report,
                          (prune_commands(all_images, volumes), usage, threshold), {})
