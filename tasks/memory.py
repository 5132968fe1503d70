"""Memory budget (seed: "メモリ不足関連の問題"): the enabled services' memory limits plus an
OS reserve must fit the host, or the OOM killer ends containers with exit 137.

Checked against the real host before any change (the registry's own check only knows the
t4g.small's nominal size): over budget stops the deploy with a table; above the warning
share it only warns.
"""

from __future__ import annotations

from pyinfra import host, inventory, logger
from pyinfra.api.exceptions import DeployError

from watchme import host_profile
from watchme.memory import CgroupMemoryLimit
from watchme.placement import services_here

MIB = 1024 * 1024


def table(services) -> str:
    """Services by memory (largest first); priority says which to stop first (highest)."""
    rows = sorted(services, key=lambda s: (-s.memory_mib, -s.priority, s.name))
    width = max([len(s.name) for s in rows] + [7])
    lines = [f"    {'service':<{width}}  memory MiB  priority"]
    lines += [f"    {s.name:<{width}}  {s.memory_mib:>10}  {s.priority:>8}" for s in rows]
    return "\n".join(lines)


def budget(services, reserve_mib: int, host_mib: int, warn_share: float) -> tuple[str, str]:
    """('ok' | 'warn' | 'over', message) for these services on a host of host_mib."""
    used = sum(s.memory_mib for s in services)
    total = used + reserve_mib
    share = total / host_mib if host_mib else float("inf")
    summary = (f"memory limits {used} MiB + OS reserve {reserve_mib} MiB = {total} MiB "
               f"of {host_mib} MiB ({share:.0%})")
    if total > host_mib:
        first = sorted(services, key=lambda s: (-s.priority, -s.memory_mib))
        return "over", (f"memory budget exceeded: {summary}\n{table(services)}\n"
                        f"  fix: lower memory_limit or set enabled: false, starting with the highest "
                        f"priority numbers ({', '.join(s.name for s in first[:3])}), or use a "
                        "larger instance")
    if share > warn_share:
        return "warn", f"memory budget above {warn_share:.0%}: {summary}"
    return "ok", summary


def check() -> None:
    d = host.data
    profile = host_profile.read(d.swap_file)  # the preflight's read: no second round trip
    # HostProfile's cgroup reading is the tree's root; the limit on our own path may be lower.
    limit = host.get_fact(CgroupMemoryLimit, _sudo=False)
    host_mib = min(profile["memory_bytes"], limit or profile["memory_bytes"]) // MIB
    level, message = budget(services_here(host, inventory), d.memory_os_reserve_mib, host_mib,
                            d.memory_warn_share)
    if level == "over":
        raise DeployError(f"{host.name}: {message}")
    if level == "warn":
        logger.warning(f"{host.print_prefix}{message}")
