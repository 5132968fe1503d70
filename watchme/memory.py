"""The memory limit that really applies to the host's processes.

HostProfile reads /sys/fs/cgroup/memory.max (or memory/memory.limit_in_bytes) at the root of
the cgroup tree, which is the machine's, not ours, whenever the cgroup namespace is the
host's (Docker with cgroupns=host, cgroup v1, as the test hosts run). The limit that applies
is the smallest one on the path from our own cgroup (/proc/self/cgroup) up to the root.
"""

from __future__ import annotations

from pyinfra.api import FactBase


class CgroupMemoryLimit(FactBase):
    """Smallest memory limit in bytes on this process's cgroup path (v1 or v2); None if none."""

    def requires_command(self, *args, **kwargs) -> str:
        return "sh"

    def command(self) -> str:
        return (
            "while IFS=: read -r _ ctrl path; do "
            'case "$ctrl" in memory) f=/sys/fs/cgroup/memory;; "") f=/sys/fs/cgroup;; *) continue;; esac; '
            'n=memory.max; [ "$ctrl" = memory ] && n=memory.limit_in_bytes; '
            'p=$path; while :; do '
            '[ -r "$f${p%/}/$n" ] && IFS= read -r v < "$f${p%/}/$n" && echo "$v $f${p%/}/$n"; '
            '[ -z "$p" ] || [ "$p" = / ] && break; p=${p%/*}; done; '
            "done < /proc/self/cgroup"
        )

    def process(self, output):
        limits = [int(line.split()[0]) for line in output if line.split()[0].isdigit()]
        return min(limits) if limits else None
