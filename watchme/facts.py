"""Batched facts: one remote command answers what stock pyinfra asks in several.

Stock pyinfra runs one command per fact; every round trip costs ~10-50 ms, so the deploy
reads the static facts of a host in one go (see bench/ for the figures).
"""

from __future__ import annotations

from pyinfra.api import FactBase


def _kv(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


class HostProfile(FactBase):
    """Distro, user, sudo, virtualisation, memory and swap, in one command, without sudo.

    Runs as the login user on purpose: it is how we find out whether sudo works at all.
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "sh"

    def command(self, swap_file: str) -> str:
        return (
            ". /etc/os-release 2>/dev/null; "
            'echo "id=$ID"; echo "like=$ID_LIKE"; echo "version=$VERSION_ID"; '
            'echo "pretty=$PRETTY_NAME"; echo "user=$(id -un)"; echo "groups=$(id -Gn)"; '
            'if [ "$(id -u)" = 0 ]; then echo sudo=root; '
            "elif sudo -n true 2>/dev/null; then echo sudo=ok; else echo sudo=no; fi; "
            'echo "virt=$(systemd-detect-virt --container 2>/dev/null || echo none)"; '
            "awk '/^MemTotal:/ {print \"mem_kib=\" $2}' /proc/meminfo; "
            'echo "cgroup_mem=$(cat /sys/fs/cgroup/memory.max '
            '/sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null | head -n1)"; '
            "awk 'NR>1 {printf \"swap_active=%s %s\\n\", $1, $3}' /proc/swaps; "
            f'echo "swap_file_bytes=$(stat -c %s {swap_file} 2>/dev/null || echo 0)"'
        )

    def process(self, output):
        lines = list(output)
        info = _kv(lines)
        info["swaps"] = [line.split("=", 1)[1] for line in lines if line.startswith("swap_active=")]
        info["groups"] = info.get("groups", "").split()
        info["like"] = info.get("like", "").split()
        info["swap_file_bytes"] = int(info.get("swap_file_bytes") or 0)
        limit = info.get("cgroup_mem", "")
        mem = int(info.get("mem_kib") or 0) * 1024
        if limit.isdigit() and 0 < int(limit) < mem:
            mem = int(limit)
        info["memory_bytes"] = mem
        info["container"] = info.get("virt", "none") not in ("", "none")
        return info


class ComposeChoice(FactBase):
    """Which compose implementation to use: the one installed, else the best apt offers.

    Returns {"package": name, "version": v, "command": "docker compose" | path} or None.
    Installed packages are read from dpkg's status (fast); apt's candidates only when none
    is installed yet. A brand-new host has empty package lists, and nothing can be detected
    from them, so this refreshes them first in that one case (it installs nothing).
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "apt-cache"

    def command(self, candidates: list[str]) -> str:
        names = " ".join(candidates)
        return (
            f"for p in {names}; do dpkg-query -W -f='${{db:Status-Status}} ${{Package}} ${{Version}}\\n' $p "
            "2>/dev/null | awk '$1 == \"installed\" {print $2, $3}'; done | grep . && exit 0; "
            "ls /var/lib/apt/lists/ | grep -q _Packages || apt-get update -qq >/dev/null 2>&1; "
            f"for p in {names}; do "
            "v=$(apt-cache show --no-all-versions $p 2>/dev/null | awk '/^Version:/ {print $2}'); "
            '[ -n "$v" ] && echo "$p $v"; done; true'
        )

    def process(self, output):
        for line in output:
            package, _, version = line.partition(" ")
            # Debian's `docker-compose` is v1 up to bookworm and v2 (a plugin) from trixie on.
            upstream = version.split(":")[-1]
            v1 = package == "docker-compose" and upstream.startswith("1.")
            return {"package": package, "version": version,
                    "command": "/usr/bin/docker-compose" if v1 else "/usr/bin/docker compose"}
        return None
