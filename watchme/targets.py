"""Where a deploy goes: parse the WATCHME_* environment into pyinfra inventory groups.

Bad input is refused here, before pyinfra opens any connection, with the variable's name
and the fix in the message.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TESTHOST = ROOT / ".testhost" / "current.json"
HOST_RE = re.compile(r"^(?:(?P<user>[a-z_][a-z0-9_.-]*)@)?(?P<host>[A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])"
                     r"(?::(?P<port>\d{1,5}))?$")


class TargetError(Exception):
    """Raised for a bad WATCHME_* setting; the message names the variable and the fix."""


def parse_hosts(spec: str, default_user: str) -> list[tuple[str, dict]]:
    """`[user@]host[:port],...` into pyinfra (name, data) pairs."""
    hosts = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        m = HOST_RE.match(item)
        if not m or (m["port"] and not 0 < int(m["port"]) < 65536):
            raise TargetError(
                f"WATCHME_HOSTS: {item!r} is not [user@]host[:port]; "
                "fix: e.g. WATCHME_HOSTS=ubuntu@203.0.113.10:22,ubuntu@203.0.113.11")
        address = m["host"].strip("[]")
        data = {"ssh_hostname": address, "ssh_user": m["user"] or default_user}
        name = address
        if m["port"]:
            data["ssh_port"] = int(m["port"])
            name = f"{address}:{m['port']}"  # so every message names the exact target
        hosts.append((name, data))
    if not hosts:
        raise TargetError("WATCHME_HOSTS is set but names no host; fix: unset it or list hosts")
    return hosts


def _key(env: dict) -> dict:
    key = env.get("WATCHME_SSH_KEY")
    if not key:
        return {}
    if not Path(key).expanduser().is_file():
        raise TargetError(f"WATCHME_SSH_KEY: no such file {key!r}; fix: the path to the "
                          "private key, e.g. WATCHME_SSH_KEY=~/watchme-key.pem")
    return {"ssh_key": str(Path(key).expanduser())}


def _known_hosts(env: dict) -> dict:
    path = env.get("WATCHME_KNOWN_HOSTS")
    if not path:
        return {}  # paramiko reads ~/.ssh/known_hosts
    if not Path(path).expanduser().is_file():
        raise TargetError(f"WATCHME_KNOWN_HOSTS: no such file {path!r}; fix: a known_hosts "
                          "file with the server's key (ssh-keyscan output checked by hand)")
    return {"ssh_known_hosts_file": str(Path(path).expanduser())}


def production(env: dict | None = None) -> list[tuple[str, dict]]:
    """Hosts from WATCHME_HOSTS; host keys must already be known (never trusted on first use)."""
    env = os.environ if env is None else env
    spec = env.get("WATCHME_HOSTS", "")
    if not spec.strip():
        return []
    common = {"ssh_strict_host_key_checking": "yes", **_key(env), **_known_hosts(env)}
    return [(name, {**common, **data})
            for name, data in parse_hosts(spec, env.get("WATCHME_SSH_USER") or "ubuntu")]


def testhost(env: dict | None = None) -> list[tuple[str, dict]]:
    """The project's own local test host, from the state file its starter wrote.

    Its host key was read from the container itself (docker exec) when it started, so
    strict checking stays on here too.
    """
    env = os.environ if env is None else env
    if env.get("WATCHME_HOSTS", "").strip():
        return []
    path = Path(env.get("WATCHME_TESTHOST") or DEFAULT_TESTHOST)
    if not path.is_file():
        raise TargetError(
            f"no target: WATCHME_HOSTS is unset and there is no test host ({path}); fix: "
            "`make deploy-local` starts one, or set WATCHME_HOSTS=ubuntu@HOST for a server")
    try:
        h = json.loads(path.read_text())
        return [(f"127.0.0.1:{h['port']}", {
            "ssh_hostname": "127.0.0.1", "ssh_port": int(h["port"]), "ssh_user": h["user"], "ssh_key": h["key"],
            "ssh_known_hosts_file": h["known_hosts"], "ssh_strict_host_key_checking": "yes",
            "testhost_container": h["name"],
        })]
    except (ValueError, KeyError) as e:
        raise TargetError(f"WATCHME_TESTHOST: {path} is not a test host state file ({e}); "
                          "fix: `make deploy-local` writes a new one") from e
