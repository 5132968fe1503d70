"""watchme-network: the fact and the operation that keep it right (both through the host
script files/network_repair.py, the one implementation), and the audit of the services'
compose files.

pyinfra's docker.network only checks that a network of that name exists, so a wrong subnet
passes silently; Ansible's docker_network recreates it but reconnects containers without
their fixed IPs. This one refuses to touch a drifted network unless asked, and a repair
(journalled on the host before the first disconnect) puts every container back with the
same IP and aliases.

Ownership: the network is a plain Docker network (no compose labels), created with the same
arguments by this operation and by watchme-infrastructure.service, whichever runs first.
Every compose file joins it with `external: true`; none owns it. A compose-owned network
would be removed by that project's `down`, and compose v2 refuses a network it did not
label, so one created by `docker network create` could never also be declared in compose.
"""

from __future__ import annotations

import base64
import json
import re
import shlex

import yaml
from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.api.exceptions import OperationError

from watchme.fact_batch import Call


def script_path() -> str:
    """Where the guard task installs network_repair.py (tasks/guard.py install_scripts)."""
    return f"{host.data.config_root}/scripts/network_repair.py"


class DockerNetwork(FactBase):
    """network_repair.py's read-only report (see files/network_repair.py): {"exists",
    "network" {"name", "driver", "subnet", "gateway", "ip_range", "labels"}, "containers"
    [{"name", "ip", "aliases", "running"}], "drift" and "outdated" [[field, wanted, found]],
    "journal", "report" (the text people read, "" when nothing differs)}, or {"exists":
    False, "error"} when Docker does not answer. None when the script is not installed yet
    (a new host), or is older than this checkout (no "report": the deploy installs the new
    one first): the operation then runs --ensure, which decides on the host.
    """

    def call(self, script: str, network: str, driver: str, subnet: str, gateway: str,
             anchor: str = "", ip_range: str = "") -> Call:
        args = ["--check", "--json", "--name", network, "--driver", driver, "--subnet", subnet,
                "--gateway", gateway]
        args += ["--ip-range", ip_range] if ip_range else []
        args += ["--anchor", anchor] if anchor else []
        # exit 3 (Docker not answering) is an answer too: its JSON says so
        return Call(script=script, argv=args, tolerant=True)

    def command(self, script: str, network: str, driver: str, subnet: str, gateway: str,
                anchor: str = "", ip_range: str = "") -> str:
        return self.call(script, network, driver, subnet, gateway, anchor, ip_range).command()

    def process(self, output):
        text = "\n".join(output).strip()
        if not text:
            return None
        data = json.loads(text)
        if "error" in data:  # Docker not answering (not installed yet): nothing to compare
            return {"exists": False, "network": None, "containers": [], "drift": [],
                    "outdated": [], "journal": None, "report": "", "error": data["error"]}
        return data if "report" in data else None


def network_fact(script: str, network: str, driver: str, subnet: str, gateway: str,
                 anchor: str = "", ip_range: str = "") -> dict | None:
    """DockerNetwork, asked the same way by the early check and the operation (one read)."""
    return host.get_fact(DockerNetwork, script=script, network=network, driver=driver,
                         subnet=subnet, gateway=gateway, **({"anchor": anchor} if anchor else {}),
                         **({"ip_range": ip_range} if ip_range else {}))


def _anchor(anchor: str) -> str:
    return f" --anchor {shlex.quote(anchor)}" if anchor else ""


def _range(ip_range: str) -> str:
    return f" --ip-range {shlex.quote(ip_range)}" if ip_range else ""


def _args(network: str, driver: str, subnet: str, gateway: str) -> str:
    return " ".join(f"--{k} {shlex.quote(v)}" for k, v in
                    (("name", network), ("driver", driver), ("subnet", subnet), ("gateway", gateway)))


def ensure_command(script: str, network: str, driver: str, subnet: str, gateway: str,
                   repair: bool = False, fixed_ips: dict[str, str] | None = None,
                   anchor: str = "", ip_range: str = "", encrypted: bool = False) -> str:
    """network_repair.py --ensure: finish a journalled repair, create when missing, refuse
    (or with repair, repair) a drifted network; the one implementation, on the host."""
    fixed = "".join(f" --fixed-ip {shlex.quote(f'{c}={ip}')}" for c, ip in sorted((fixed_ips or {}).items()))
    return (f"python3 {shlex.quote(script)} --ensure {_args(network, driver, subnet, gateway)}"
            f"{_range(ip_range)}{' --encrypted' if encrypted and driver == 'overlay' else ''}"
            f"{_anchor(anchor)}"
            f"{' --repair' if repair else ''}{fixed}")


def create_command(name: str, driver: str, subnet: str, gateway: str, anchor: str = "",
                   ip_range: str = "", encrypted: bool = False) -> str:
    """watchme-infrastructure.service's ExecStart: the same --ensure as the deploy (creates
    the network, finishes an interrupted repair, fails on drift so no service starts on it)."""
    return "/usr/bin/" + ensure_command(script_path(), name, driver, subnet, gateway,
                                        anchor=anchor, ip_range=ip_range, encrypted=encrypted)



@operation()
def docker_network(network: str, driver: str, subnet: str, gateway: str, repair: bool = False,
                   fixed_ips: dict[str, str] | None = None, script: str | None = None,
                   anchor: str = "", ip_range: str = "", encrypted: bool = False):
    """A Docker network with exactly this driver, subnet and gateway, and ip_range for
    Docker's dynamic addresses (network_repair.py).

    As wanted and no interrupted repair: no change. Missing, an unfinished repair journal,
    or the script not installed yet (its fact cannot look): --ensure on the host. Drifted:
    an error with the diff, unless repair (journal first, then every attached container
    back with its IP, fixed_ips from the registry winning, and aliases). Outdated (an
    existing network without the ip_range): no change unless repair, which recreates it
    the same way; it works as it is, so it is reported (tasks/network.py), never forced.
    """
    script = script or script_path()
    found = network_fact(script, network, driver, subnet, gateway, anchor, ip_range)
    anchored = not anchor or (found or {}).get("anchor", {}).get("running") and \
        found["anchor"].get("attached")
    if found and found["exists"] and not found["drift"] and not found["journal"] and anchored \
            and not (repair and found["outdated"]):
        host.noop(f"network {network}: {driver} {subnet} gateway {gateway}"
                  + (f" (outdated: {found['outdated'][0][0]} {found['outdated'][0][2]}, wanted "
                     f"{found['outdated'][0][1]})" if found["outdated"] else ""))
        return
    if found and found["drift"] and not repair and not found["journal"]:
        raise OperationError(found["report"])
    yield ensure_command(script, network, driver, subnet, gateway, repair, fixed_ips,
                         anchor=anchor, ip_range=ip_range, encrypted=encrypted)


class ComposeFiles(FactBase):
    """One command: owner, group, mode and text of each compose file; None when missing."""

    def command(self, paths: list[str]) -> str:
        quoted = " ".join(shlex.quote(p) for p in paths)
        return (f"for f in {quoted}; do if [ -f \"$f\" ]; then "
                'echo "@@file $(stat -c "%U %G %a" "$f") $f"; base64 "$f"; '
                'else echo "@@missing $f"; fi; done')

    def process(self, output):
        files: dict[str, dict | None] = {}
        current = None
        for line in output:
            if line.startswith("@@missing "):
                files[line[10:]] = current = None
            elif line.startswith("@@file "):
                user, group, mode, path = line[7:].split(" ", 3)
                current = files[path] = {"user": user, "group": group, "mode": mode, "b64": []}
            elif current is not None:
                current["b64"].append(line)
        for f in files.values():
            if f is not None:
                f["text"] = base64.b64decode("".join(f.pop("b64"))).decode()
        return files


def _network_entries(doc, name: str) -> list[tuple[str, dict]]:
    """Top-level networks entries that mean watchme-network: by key or by `name:`."""
    nets = doc.get("networks") if isinstance(doc, dict) else None
    if not isinstance(nets, dict):
        return []
    out = []
    for key, conf in nets.items():
        conf = conf if isinstance(conf, dict) else {}
        if key == name or conf.get("name") == name:
            out.append((str(key), conf))
    return out


def audit_compose(text: str, name: str, subnet: str) -> list[tuple[str, str]]:
    """(networks key, problem) for one compose file; [] when it joins the network correctly."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [("", f"not valid YAML: {str(e).splitlines()[0]}")]
    problems = []
    for key, conf in _network_entries(doc, name):
        ext = conf.get("external")
        if not (ext is True or isinstance(ext, dict)):
            what = f"driver: {conf['driver']}" if "driver" in conf else "no external: true"
            problems.append((key, f"networks.{key} has {what}: compose creates a network of its "
                                  f"own instead of joining {name}; use external: true"))
        for cfg in ((conf.get("ipam") or {}).get("config") or []):
            if isinstance(cfg, dict) and cfg.get("subnet") not in (None, subnet):
                problems.append((key, f"networks.{key} asks for subnet {cfg['subnet']}, not {subnet}"))
    return problems


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def migrate_compose(text: str, keys: list[str]) -> str:
    """The same text with each given entry of the top-level `networks:` replaced by
    `external: true` (a `name:` is kept); every other line stays byte for byte.

    Raises ValueError when the edit cannot be made safely (checked by parsing both texts).
    """
    lines = text.splitlines(keepends=True)
    top = next((i for i, l in enumerate(lines) if re.match(r"networks:\s*(#.*)?$", l)), None)
    if top is None:
        raise ValueError("no block-style top-level networks: section to edit")
    for key in keys:
        lines = _replace_entry(lines, top, key)
    new = "".join(lines)
    before, after = yaml.safe_load(text), yaml.safe_load(new)
    for key in keys:
        old = before["networks"][key] if isinstance(before["networks"][key], dict) else {}
        before["networks"][key] = {"external": True, **({"name": old["name"]} if "name" in old else {})}
    if before != after:
        raise ValueError("the edit would change more than the network entry; migrate it by hand")
    return new


def _replace_entry(lines: list[str], top: int, key: str) -> list[str]:
    entry = re.compile(rf"(\s+)(['\"]?){re.escape(key)}\2:\s*(.*?)\s*$")
    i = top + 1
    while i < len(lines) and (not lines[i].strip() or lines[i][0] in " \t#"):
        m = entry.match(lines[i])
        if m and lines[i][0] in " \t":
            indent, inline = m.group(1), m.group(3)
            end = i + 1
            while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > len(indent)):
                end += 1
            while end > i + 1 and not lines[end - 1].strip():
                end -= 1  # blank lines before the next entry stay where they are
            if inline and not inline.startswith("#"):
                conf = yaml.safe_load(inline) or {}
                name = [f"{indent}  name: {conf['name']}\n"] if isinstance(conf, dict) and "name" in conf else []
            else:
                name = [l for l in lines[i + 1:end] if re.match(rf"{indent}\s+name:", l)
                        and _indent(l) == _indent(next(b for b in lines[i + 1:end] if b.strip()))]
            new = [f"{indent}{m.group(2)}{key}{m.group(2)}:\n", *name, f"{indent}  external: true\n"]
            if end == len(lines) and not lines[end - 1].endswith("\n"):
                new[-1] = new[-1].rstrip("\n")
            return lines[:i] + new + lines[end:]
        i += 1
    raise ValueError(f"no networks.{key} entry in block style to edit")
