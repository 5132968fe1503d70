"""The host profile: what the deploy must know about a host before it changes anything.

One remote command (files/host-profile.sh), run as the login user without sudo, answers the
preflight (distro, user, groups, sudo), the memory budget (memory, cgroup limit), the swap
step, and what software is already there in which form (engine, compose, Nginx layout,
certbot, ECR helper, installed packages). watchme/packages.py turns it into decisions.

The deploy reads it once per host (`read()`): the preflight reads it before the lock, later
steps get the same answer. Nothing the deploy changes before those steps touches what they
use from it (memory, swap), so the answer is never stale where it is used.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from pyinfra.api import FactBase
from pyinfra.context import ctx_host

from watchme import kv

SCRIPT = (Path(__file__).resolve().parent.parent / "files" / "host-profile.sh").read_text()


def parse(lines) -> dict:
    """The script's key=value lines -> the profile dict the deploy uses."""
    raw = kv.parse(lines)
    info = {k: v for k, v in raw.items() if "." not in k}

    def prefixed(prefix: str) -> dict[str, str]:
        return {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}

    info["swaps"] = [f"{name} {size}" for name, size in prefixed("swap.").items()]
    info["paths"] = {name: path for name, path in prefixed("path.").items() if path}
    info["packages"] = prefixed("pkg.")
    info["units"] = prefixed("unit.")
    info["snaps"] = sorted(prefixed("snap."))
    info["nginx_includes"] = sorted(prefixed("nginx."))
    info["docker_group"] = raw.get("docker_group") == "yes"
    info["compose_plugin"] = raw.get("compose_plugin", "")
    info["groups"] = raw.get("groups", "").split()
    info["like"] = raw.get("like", "").split()
    info["swap_file_bytes"] = int(raw.get("swap_file_bytes") or 0)
    limit = raw.get("cgroup_mem", "")
    mem = int(raw.get("mem_kib") or 0) * 1024
    if limit.isdigit() and 0 < int(limit) < mem:
        mem = int(limit)
    info["memory_bytes"] = mem
    info["container"] = raw.get("virt", "none") not in ("", "none")
    return info


class HostProfile(FactBase):
    """Distro, user, sudo, memory, swap and the installed software, in one command, no sudo.

    Runs as the login user on purpose: it is how we find out whether sudo works at all.
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "sh"

    def command(self, swap_file: str) -> str:
        return f"set -- {shlex.quote(swap_file)}\n{SCRIPT}"

    def process(self, output):
        return parse(output)


def read(swap_file: str) -> dict:
    """The current host's profile, read once per deploy (see the module docstring)."""
    host = ctx_host.get()
    cache = host.__dict__.setdefault("_watchme_profiles", {})
    if swap_file not in cache:
        cache[swap_file] = host.get_fact(HostProfile, swap_file=swap_file, _sudo=False)
    return cache[swap_file]
