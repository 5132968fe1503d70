"""watchme-network: the fact that reads its real IPAM config, the operation that keeps it
right, and the audit of the services' compose files.

pyinfra's docker.network only checks that a network of that name exists, so a wrong subnet
passes silently; Ansible's docker_network recreates it but reconnects containers without
their fixed IPs. This one refuses to touch a drifted network unless asked, and a repair
puts every container back with the same IP and aliases.

Ownership: the network is a plain Docker network (no compose labels), created with the same
arguments by this operation and by watchme-infrastructure.service, whichever runs first.
Every compose file joins it with `external: true`; none owns it. A compose-owned network
would be removed by that project's `down`, and compose v2 refuses a network it did not
label, so one created by `docker network create` could never also be declared in compose.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import shlex

import yaml
from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.api.exceptions import OperationError


class DockerNetwork(FactBase):
    """One command: the network's driver and IPAM config, and every container attached
    to it (running or stopped) with its IP and aliases. None when the network is missing.
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "docker"

    def command(self, network: str) -> str:
        n = shlex.quote(network)
        # inspect prints [] and fails for a missing network: print [] once, either way.
        return (f"out=$(docker network inspect {n} 2>/dev/null) || out='[]'; "
                "echo \"$out\"; echo '@@containers'; "
                f"ids=$(docker ps -aq --no-trunc --filter network={n}); "
                'if [ -n "$ids" ]; then docker inspect $ids; else echo "[]"; fi')

    def process(self, output):
        text = "\n".join(output)
        net_json, _, containers_json = text.partition("@@containers")
        nets = json.loads(net_json or "[]")
        if not nets:
            return None
        net = nets[0]
        configs = (net.get("IPAM") or {}).get("Config") or []
        first = configs[0] if configs else {}
        containers = []
        for c in json.loads(containers_json or "[]"):
            ep = ((c.get("NetworkSettings") or {}).get("Networks") or {}).get(net["Name"]) or {}
            static = (ep.get("IPAMConfig") or {}).get("IPv4Address") or ""
            short = c["Id"][:12]
            containers.append({
                "name": c["Name"].lstrip("/"),
                "ip": static or ep.get("IPAddress") or "",
                # Docker adds the short ID itself on every connect; passing it back is noise.
                "aliases": [a for a in ep.get("Aliases") or [] if a != short],
                "running": bool((c.get("State") or {}).get("Running")),
            })
        subnet = first.get("Subnet", "")
        return {
            "name": net["Name"],
            "driver": net.get("Driver", ""),
            "subnet": subnet,
            # Created without --gateway, Docker records none and uses the first address.
            "gateway": first.get("Gateway") or default_gateway(subnet),
            "labels": net.get("Labels") or {},
            "containers": sorted(containers, key=lambda c: c["name"]),
        }


def default_gateway(subnet: str) -> str:
    """The gateway Docker uses when none is given: the subnet's first host address."""
    try:
        return str(next(ipaddress.ip_network(subnet, strict=False).hosts()))
    except (ValueError, StopIteration):
        return ""


def drift(found: dict, driver: str, subnet: str, gateway: str) -> list[tuple[str, str, str]]:
    """(field, wanted, found) for every setting that differs."""
    wanted = {"driver": driver, "subnet": subnet, "gateway": gateway}
    return [(k, v, found[k] or "(none)") for k, v in wanted.items() if found[k] != v]


def drift_report(found: dict, diffs: list[tuple[str, str, str]]) -> str:
    lines = [f"{found['name']} differs from the wanted configuration:"]
    lines += [f"  {k:<8} wanted {w:<16} found {f}" for k, w, f in diffs]
    cs = found["containers"]
    lines.append(f"  attached containers ({len(cs)}):" if cs else "  attached containers: none")
    for c in cs:
        aliases = f" aliases {','.join(c['aliases'])}" if c["aliases"] else ""
        lines.append(f"    {c['name']:<28} {c['ip'] or '(dynamic)'}{aliases}"
                     f"{'' if c['running'] else ' (stopped)'}")
    lines.append("  fix: rerun with --data network_repair=true to recreate it and reconnect these "
                 "containers with their IPs and aliases (each loses the network for a moment)")
    return "\n".join(lines)


def create_command(name: str, driver: str, subnet: str, gateway: str) -> str:
    return (f"docker network create --driver {shlex.quote(driver)} --subnet {shlex.quote(subnet)} "
            f"--gateway {shlex.quote(gateway)} {shlex.quote(name)}")


def unit_check_pattern(driver: str, subnet: str, gateway: str) -> str:
    """The sh `case` pattern of what watchme-infrastructure.service accepts as
    `docker network inspect -f '{{.Driver}} {{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}'`
    (trailing space stripped): no gateway listed is fine when Docker's default is the wanted one."""
    ok = [f"{driver} {subnet} {gateway}"] + [f"{driver} {subnet}"] * (default_gateway(subnet) == gateway)
    return "|".join(f'"{o}"' for o in ok)


def repair_ip(container: dict, subnet: str, fixed_ips: dict[str, str]) -> str:
    """The IP a container gets back: the registry's, else its own if it fits the new subnet,
    else '' (Docker picks one)."""
    net = ipaddress.ip_network(subnet)
    for ip in (fixed_ips.get(container["name"], ""), container["ip"].split("/")[0]):
        if ip and ipaddress.ip_address(ip) in net:
            return ip
    return ""


@operation()
def docker_network(network: str, driver: str, subnet: str, gateway: str, repair: bool = False,
                   fixed_ips: dict[str, str] | None = None):
    """A Docker network with exactly this driver, subnet and gateway.

    Missing: created. Different: an error with the diff, unless repair, which disconnects
    every attached container, recreates the network and reconnects each with its IP
    (fixed_ips, from the registry, wins) and aliases.
    """
    found = host.get_fact(DockerNetwork, network=network)
    if found is None:
        yield create_command(network, driver, subnet, gateway)
        return
    diffs = drift(found, driver, subnet, gateway)
    if not diffs:
        host.noop(f"network {network}: {driver} {subnet} gateway {gateway}")
        return
    if not repair:
        raise OperationError(drift_report(found, diffs))
    for c in found["containers"]:
        yield f"docker network disconnect {shlex.quote(network)} {shlex.quote(c['name'])}"
    yield f"docker network rm {shlex.quote(network)}"
    yield create_command(network, driver, subnet, gateway)
    for c in found["containers"]:
        ip = repair_ip(c, subnet, fixed_ips or {})
        args = [f"--ip {ip}"] if ip else []
        args += [f"--alias {shlex.quote(a)}" for a in c["aliases"]]
        yield " ".join(["docker network connect", *args, shlex.quote(network), shlex.quote(c["name"])])


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
