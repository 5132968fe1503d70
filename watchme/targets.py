"""Where a deploy goes: parse the WATCHME_* environment into pyinfra inventory groups.

Bad input is refused here, before pyinfra opens any connection, with the variable's name
and the fix in the message.
"""

from __future__ import annotations

import json
import os
import re

# (pathlib is imported where it is used: `watchme deploy` reads this module before its
# memo check's ssh starts, and pathlib is ~8 ms of imports; watchme/spawn.py says why.)
ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
DEFAULT_TESTHOST = os.path.join(ROOT, ".testhost", "current.json")
ENTRY_RE = re.compile(r"^(?:(?P<name>[A-Za-z0-9_.-]+)=)?"
                      r"(?:(?P<user>[a-z_][a-z0-9_.-]*)@)?(?P<host>[A-Za-z0-9_.-]+|\[[0-9a-fA-F:]+\])"
                      r"(?::(?P<port>\d{1,5}))?$")
IP_RE = re.compile(r"^(\d{1,3}\.){3}\d{1,3}$|:")
FORM = "[name=][user@]host[:port]"
EXAMPLE = "e.g. WATCHME_HOSTS=front=ubuntu@203.0.113.10:22,worker=ubuntu@203.0.113.11 or watchme-prod"


class TargetError(Exception):
    """Raised for a bad WATCHME_* setting; the message names the variable and the fix."""


def ssh_config(env: dict):
    """The operator's ~/.ssh/config (or WATCHME_SSH_CONFIG), as OpenSSH reads it (Include too)."""
    from pathlib import Path
    from pyinfra.connectors.sshuserclient.config import SSHConfig

    path = Path(env.get("WATCHME_SSH_CONFIG") or Path.home() / ".ssh" / "config").expanduser()
    config = SSHConfig()
    if env.get("WATCHME_SSH_CONFIG") and not path.is_file():
        raise TargetError(f"WATCHME_SSH_CONFIG: no such file {str(path)!r}; fix: the path to "
                          "an ssh config, or unset it to use ~/.ssh/config")
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            config.parse(f)
    return config, path


def _alias(item: str, alias: str, config, path: Path) -> dict:
    """HostName/User/Port/IdentityFile of a ~/.ssh/config Host alias, as pyinfra host data."""
    from pathlib import Path
    found = config.lookup(alias)
    data: dict = {}
    if found.get("hostname", alias) != alias:
        data["ssh_hostname"] = found["hostname"]
    elif "." not in alias and alias != "localhost" and not IP_RE.search(alias):
        raise TargetError(
            f"WATCHME_HOSTS: {item!r}: {alias!r} is no address and no Host alias in {path}; "
            f"fix: add `Host {alias}` with its HostName to {path}, or give the address")
    if "user" in found:
        data["ssh_user"] = found["user"]
    if "port" in found:
        data["ssh_port"] = _port(item, found["port"], f"Port in {path}")
    keys = [Path(k).expanduser() for k in found.get("identityfile", [])]
    if keys:
        existing = [k for k in keys if k.is_file()]
        if not existing:
            raise TargetError(f"WATCHME_HOSTS: {item!r}: IdentityFile {keys[0]} (from {path}) "
                              "does not exist; fix: the path to the key, or set WATCHME_SSH_KEY")
        data["ssh_key"] = str(existing[0])
    return data


def _port(item: str, port, where: str = "port") -> int:
    if not str(port).isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"WATCHME_HOSTS: {item!r}: {where} {port!r} is not 1-65535; "
                          f"fix: {EXAMPLE}")
    return int(port)


def entries(spec: str):
    """Each non-empty entry of WATCHME_HOSTS as (item, match, address, name): match is None
    for an entry that is not `[name=][user@]host[:port]` (the caller says so its own way);
    a bare entry's name is its address, with the port when one is given. The inventory and
    `watchme deploy`'s no-op memo (which must name hosts as the inventory does) both read
    the variable through this."""
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        m = ENTRY_RE.match(item)
        if not m:
            yield item, None, "", ""
            continue
        address = m["host"].strip("[]")
        yield item, m, address, m["name"] or (f"{address}:{m['port']}" if m["port"] else address)


def parse_hosts(spec: str, default_user: str, env: dict | None = None) -> list[tuple[str, dict]]:
    """`[name=][user@]host[:port],...` into pyinfra (name, data) pairs.

    `host` is an address, a DNS name, or a Host alias of ~/.ssh/config (its HostName, User,
    Port and IdentityFile apply; an explicit user@ or :port wins). The first entry is the
    front (public Nginx): it gets `front: True`; every host gets `placement_name`, its name
    (a bare entry's name is its address, with the port when one is given).
    """
    env = {} if env is None else env
    config = path = None
    hosts = []
    for item, m, address, name in entries(spec):
        if not m:
            raise TargetError(f"WATCHME_HOSTS: {item!r} is not {FORM}; fix: {EXAMPLE}")
        data: dict = {}
        if not m["host"].startswith("[") and not IP_RE.search(address):
            if config is None:
                config, path = ssh_config(env)
            data.update(_alias(item, address, config, path))
        data.setdefault("ssh_hostname", address)
        if m["user"] or "ssh_user" not in data:
            data["ssh_user"] = m["user"] or default_user
        if m["port"]:
            data["ssh_port"] = _port(item, m["port"])
        if any(name == other for other, _ in hosts):
            raise TargetError(f"WATCHME_HOSTS: {name!r} is named twice; fix: one entry per "
                              "host, e.g. name=user@addr to tell two apart")
        data["placement_name"] = name
        data["front"] = not hosts
        hosts.append((name, data))
    if not hosts:
        raise TargetError("WATCHME_HOSTS is set but names no host; fix: unset it or list hosts")
    return hosts


def _key(env: dict) -> dict:
    from pathlib import Path
    key = env.get("WATCHME_SSH_KEY")
    if not key:
        return {}
    path = Path(key).expanduser()
    if not path.is_file():
        raise TargetError(f"WATCHME_SSH_KEY: no such file {key!r}; fix: the path to the "
                          "private key, e.g. WATCHME_SSH_KEY=~/watchme-key.pem")
    try:
        import paramiko

        paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        pass  # an encrypted key: the agent or pyinfra's ssh_key_password unlocks it
    except (paramiko.SSHException, ValueError, OSError) as e:
        raise TargetError(f"WATCHME_SSH_KEY: {key!r} is not a private key ({e}); fix: the "
                          "private key file (ed25519 or RSA, e.g. the EC2 .pem), not the .pub") from e
    return {"ssh_key": str(path)}


def _known_hosts(env: dict) -> dict:
    from pathlib import Path
    path = env.get("WATCHME_KNOWN_HOSTS")
    if not path:
        return {}  # paramiko reads ~/.ssh/known_hosts (hashed |1| entries too)
    if not Path(path).expanduser().is_file():
        raise TargetError(f"WATCHME_KNOWN_HOSTS: no such file {path!r}; fix: a known_hosts "
                          "file with the server's key (ssh-keyscan output checked by hand)")
    return {"ssh_known_hosts_file": str(Path(path).expanduser())}


def production(env: dict | None = None) -> list[tuple[str, dict]]:
    """Hosts from WATCHME_HOSTS; host keys must already be known (never trusted on first use)."""
    from pathlib import Path
    env = os.environ if env is None else env
    spec = env.get("WATCHME_HOSTS", "")
    if not spec.strip():
        return []
    if env.get("WATCHME_REPLAY_DIR"):
        raise TargetError("WATCHME_REPLAY_DIR and WATCHME_HOSTS are both set; fix: unset "
                          "WATCHME_HOSTS for an offline preview, or WATCHME_REPLAY_DIR to deploy")
    common = {"ssh_strict_host_key_checking": "yes", **_known_hosts(env)}
    if env.get("WATCHME_SSH_CONFIG"):
        common["ssh_config_file"] = str(Path(env["WATCHME_SSH_CONFIG"]).expanduser())
    key = _key(env)  # WATCHME_SSH_KEY wins over an alias's IdentityFile
    return [(name, {**common, **data, **key})
            for name, data in parse_hosts(spec, env.get("WATCHME_SSH_USER") or "ubuntu", env)]


def replay(env: dict | None = None) -> list[tuple[str, dict]]:
    """The hosts of an offline preview: one `@replay/<file>` per fact record in the dir.

    Never a connection: watchme/replay.py answers from the records. Order is the record
    files' (sorted) order; the front is the record that says so, else the first.
    """
    from pathlib import Path
    env = os.environ if env is None else env
    folder = env.get("WATCHME_REPLAY_DIR")
    if not folder:
        return []
    from watchme.replay import RecordError, load

    files = sorted(Path(folder).glob("*.facts.json"))
    if not files:
        raise TargetError(f"WATCHME_REPLAY_DIR: no *.facts.json in {folder!r}; fix: download "
                          "the fact records of the last successful deploy of main")
    hosts = []
    for i, path in enumerate(files):
        try:
            name = load(path)["host"]
        except RecordError as e:
            raise TargetError(f"WATCHME_REPLAY_DIR: {e}") from e
        hosts.append((f"@replay/{path}", {"placement_name": name, "front": i == 0}))
    return hosts


def testhost(env: dict | None = None) -> list[tuple[str, dict]]:
    """The project's own local test host, from the state file its starter wrote.

    Its host key was read from the container itself (docker exec) when it started, so
    strict checking stays on here too.
    """
    from pathlib import Path
    env = os.environ if env is None else env
    if env.get("WATCHME_HOSTS", "").strip() or env.get("WATCHME_REPLAY_DIR"):
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
            "testhost_container": h["name"], "front": True,
            "placement_name": f"127.0.0.1:{h['port']}",
        })]
    except (ValueError, KeyError) as e:
        raise TargetError(f"WATCHME_TESTHOST: {path} is not a test host state file ({e}); "
                          "fix: `make deploy-local` writes a new one") from e
