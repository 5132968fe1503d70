"""`watchme import`: the service registry from the live host, read-only.

    watchme import --output FILE [--merge EXISTING] [--allow-unexpressed] [--data k=v ...]

One fact (one round trip, through the deploy's own inventory and group data) reads
`nginx -T`, the `watchme-*.service` units, `docker inspect` of every container and
watchme-network. The Nginx config is parsed with crossplane. Each location of the site
becomes a service, mapped to its container by the host port the container publishes;
each field is either read from the host (`# from host: <directive>`) or assumed (listed in
the entry's `assumed:`). Locations the registry cannot express (exact or regex matches,
`return`, no proxy_pass, a variable upstream, an upstream no container publishes, a
directive with no registry field) become `extra_locations:` entries when
watchme/extra_locations.py accepts them (prefix or exact match, allow-listed directives,
upstreams on the host's loopback), so the deploy keeps them answering; the rest are reported
by name with the reason and the command exits 2 unless --allow-unexpressed.

--merge EXISTING writes EXISTING updated with what the host runs (round-trip: its comments
stay), prints the unified diff, and keeps EXISTING's values for fields the import could only
assume.
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crossplane
from pyinfra.api import FactBase

from watchme import extra_locations
from watchme.live_routes import split_dump

SITE = "api.hey-watch.me"
NETWORK = "watchme-network"
STANDARD_HEADERS = {"Host", "X-Real-IP", "X-Forwarded-For", "X-Forwarded-Proto"}
NGINX_DEFAULT_TIMEOUT = "60s"  # proxy_{connect,read,send}_timeout when not set
NGINX_DEFAULT_BODY = "1m"  # client_max_body_size when not set
ASSUMED_PRIORITY = 3
# Directives of a location that the registry expresses (or that its template renders).
KNOWN = {"proxy_pass", "proxy_set_header", "add_header", "if", "client_max_body_size",
         "proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout"}

# Runs on the host (python3 stdlib, as root through the deploy's sudo); prints one JSON.
GATHER = r"""
import json, subprocess
def run(*cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}
ids = run("docker", "ps", "-aq")["out"].split()
units = run("systemctl", "list-unit-files", "--no-legend", "watchme-*.service")["out"].split()
out = {
    "nginx": run("nginx", "-T"),
    "units": run("systemctl", "cat", *[u for u in units if u.endswith(".service")]) if units
             else {"rc": 0, "out": "", "err": ""},
    "containers": json.loads(run("docker", "inspect", *ids)["out"] or "[]") if ids else [],
    "network": json.loads(run("docker", "network", "inspect", "%s")["out"] or "[]"),
}
print(json.dumps(out))
""" % NETWORK


class LiveServer(FactBase):
    """Everything `watchme import` reads, in one command (JSON)."""

    def requires_command(self) -> str:
        return "python3"

    def command(self) -> str:
        from shlex import quote
        return f"python3 -c {quote(GATHER)}"

    def process(self, output):
        return json.loads("\n".join(output))


# ---------------------------------------------------------------- nginx -T parsing


def parse_dump(text: str) -> dict[str, list[dict]]:
    """{path: crossplane parse tree} for each file in the dump (includes not followed)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (path, content) in enumerate(split_dump(text).items()):
            f = Path(tmp) / f"{i}.conf"
            f.write_text(content)
            parsed = crossplane.parse(str(f), single=True, check_ctx=False, check_args=False,
                                      comments=False)
            errors = parsed["errors"]
            if errors:
                raise ImportProblem(f"nginx -T: {path}: cannot parse: {errors[0]['error']}")
            out[path] = parsed["config"][0]["parsed"]
    return out


class ImportProblem(Exception):
    pass


def _find(block: list[dict], name: str) -> list[dict]:
    return [d for d in block if d["directive"] == name]


def _walk_servers(tree: list[dict]):
    for d in tree:
        if d["directive"] == "server":
            yield d
        elif d["directive"] in ("http",):
            yield from _walk_servers(d.get("block", []))


def _value(block: list[dict], name: str) -> str | None:
    found = _find(block, name)
    return " ".join(found[-1]["args"]) if found else None


@dataclass
class Location:
    path: str
    modifier: str
    block: list[dict]
    line: int
    file: str


@dataclass
class Site:
    server_name: str
    tls: dict[str, str] = field(default_factory=dict)
    listen: list[str] = field(default_factory=list)
    redirect_http: bool = False
    server_body_size: str | None = None
    locations: list[Location] = field(default_factory=list)


def read_site(trees: dict[str, list[dict]], server_name: str = SITE) -> Site:
    """The server for server_name that listens with ssl (else the first one with locations),
    and whether a plain-HTTP server for it redirects to https."""
    site = Site(server_name)
    http_body = None
    servers = []  # (file, server block, listens)
    for path, tree in trees.items():
        for d in tree:
            if d["directive"] == "http":
                http_body = _value(d["block"], "client_max_body_size") or http_body
        for server in _walk_servers(tree):
            block = server["block"]
            if server_name in [a for d in _find(block, "server_name") for a in d["args"]]:
                servers.append((path, block, [" ".join(d["args"]) for d in _find(block, "listen")]))
    tls = [s for s in servers if any("ssl" in l.split() for l in s[2])]
    main = (tls or [s for s in servers if _find(s[1], "location")] or [None])[0]
    if main is None:
        return site
    path, block, site.listen = main
    for key in ("ssl_certificate", "ssl_certificate_key"):
        if _value(block, key):
            site.tls[key] = _value(block, key)
    site.server_body_size = _value(block, "client_max_body_size") or http_body
    site.locations = [Location(path=d["args"][-1], modifier=d["args"][0] if len(d["args"]) > 1 else "",
                               block=d.get("block", []), line=d["line"], file=path)
                      for d in _find(block, "location")]
    site.redirect_http = any("https://$host$request_uri" in json.dumps(s[1])
                             for s in servers if s not in tls)
    return site


# ---------------------------------------------------------------- locations -> services

@dataclass
class Proxy:
    host: str
    port: int
    path: str | None  # None: proxy_pass without a URI (nginx passes the request URI as is)


def parse_proxy_pass(url: str) -> Proxy | str:
    """The proxy_pass target, or why the registry cannot express it."""
    if "$" in url:
        return f"proxy_pass {url} uses a variable; the registry needs a fixed host:port"
    m = re.fullmatch(r"http://([A-Za-z0-9.-]+):(\d+)(/[^\s]*)?", url)
    if not m:
        return f"proxy_pass {url} is not http://host:port[/path] (https, unix sockets and " \
               "upstream{} groups have no registry field)"
    return Proxy(m.group(1), int(m.group(2)), m.group(3))


def _headers(block: list[dict]) -> dict[str, str]:
    return {d["args"][0].strip('"'): " ".join(d["args"][1:]).strip('"')
            for d in _find(block, "add_header") if d["args"]}


def _is_preflight_if(d: dict) -> bool:
    args = " ".join(d["args"]).replace('"', "").replace("'", "")
    body = d.get("block", [])
    return (re.fullmatch(r"\$request_method\s*=\s*OPTIONS", args) is not None
            and len(body) == 1 and body[0]["directive"] == "return" and body[0]["args"] == ["204"])


def location_problems(loc: Location) -> list[str]:
    """Why a location cannot become a registry entry (empty: it can)."""
    where = f"location {loc.modifier + ' ' if loc.modifier else ''}{loc.path}"
    out = []
    if loc.modifier:
        kind = {"=": "exact match", "~": "regex match", "~*": "case-insensitive regex match",
                "^~": "prefix match that stops regex search"}.get(loc.modifier, loc.modifier)
        out.append(f"{where}: {kind} ('{loc.modifier}'); the registry only has plain prefix locations")
    for d in loc.block:
        name = d["directive"]
        if name == "return":
            out.append(f"{where}: answers with `return {' '.join(d['args'])}` itself; the registry "
                       "only has proxied services")
        elif name == "if" and not _is_preflight_if(d):
            out.append(f"{where}: `if ({' '.join(d['args'])})` is not the CORS preflight pattern")
        elif name == "proxy_set_header" and d["args"] and d["args"][0] not in STANDARD_HEADERS:
            out.append(f"{where}: proxy_set_header {d['args'][0]} has no registry field")
        elif name not in KNOWN and name != "return":
            out.append(f"{where}: directive `{name}` has no registry field (it would be dropped)")
    passes = _find(loc.block, "proxy_pass")
    if not passes and not any(d["directive"] == "return" for d in loc.block):
        out.append(f"{where}: no proxy_pass; the registry only has proxied services")
    elif passes:
        target = parse_proxy_pass(passes[-1]["args"][0])
        if isinstance(target, str):
            out.append(f"{where}: {target}")
        elif not loc.modifier and target.path is not None and loc.path.endswith("/") != target.path.endswith("/"):
            out.append(f"{where}: proxy_pass path {target.path} and the location disagree on the "
                       "trailing slash; the registry refuses that pair")
    return out


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    s = re.sub(r"-(prod|1)$", "", s)
    return s if re.match(r"[a-z]", s) else f"svc-{s}"


def _mem(byte_count: int) -> str | None:
    if not byte_count:
        return None
    mib = byte_count // (1024 * 1024)
    return f"{mib // 1024}g" if mib % 1024 == 0 else f"{mib}m"


def unit_files(units_text: str) -> dict[str, dict[str, str]]:
    """`systemctl cat` output: {unit name: {Description, compose_file}}."""
    out: dict[str, dict[str, str]] = {}
    current = None
    for line in units_text.splitlines():
        m = re.fullmatch(r"# (/\S+/)([^/\s]+\.service)", line.strip())
        if m:
            current = m.group(2)
            out.setdefault(current, {})
            continue
        if current is None or "=" not in line or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if key == "Description":
            out[current]["description"] = value.strip()
        elif key == "ExecStart":
            m = re.search(r"\s-f\s+(\S+)", value)
            if m:
                out[current]["compose_file"] = m.group(1)
    return out


def _container_ports(c: dict) -> set[int]:
    ports = set()
    for bindings in (c.get("HostConfig", {}).get("PortBindings") or {}).values():
        for b in bindings or []:
            if str(b.get("HostPort", "")).isdigit():
                ports.add(int(b["HostPort"]))
    return ports


def _labels(c: dict) -> dict[str, str]:
    return c.get("Config", {}).get("Labels") or {}


@dataclass
class Imported:
    services: list[dict]  # entries with "_why": {field: comment}
    unexpressed: list[str]
    site: Site
    notes: list[str]
    extras: list[dict] = field(default_factory=list)  # {location, config, _why}


def as_extra(loc: Location) -> dict | list[str]:
    """The location as an extra_locations entry, or why it cannot be one."""
    key = f"{loc.modifier} {loc.path}" if loc.modifier else loc.path
    config = extra_locations.body(loc.block) if loc.block else ""
    try:
        extra_locations.parse(key, config)
    except extra_locations.ExtraLocationError as e:
        return e.problems
    return {"location": key, "config": config,
            "_why": f"from host: {loc.file}:{loc.line} (no container serves it; kept as written)"}


def build(live: dict) -> Imported:
    """The registry entries for what the host runs (pure: tested on recorded facts)."""
    if live["nginx"]["rc"] != 0:
        raise ImportProblem(f"nginx -T failed on the host: {live['nginx']['err'].strip()[-500:]}")
    site = read_site(parse_dump(live["nginx"]["out"]))
    if not site.locations:
        raise ImportProblem(f"nginx -T has no server for {SITE} with locations")
    units = unit_files(live["units"]["out"])
    by_compose = {u["compose_file"]: name for name, u in units.items() if "compose_file" in u}
    by_port: dict[int, dict] = {}
    for c in live["containers"]:
        for p in _container_ports(c):
            by_port[p] = c
    services, unexpressed, notes, extras = [], [], [], []
    for loc in site.locations:
        problems = location_problems(loc)
        target = None
        if not problems:
            target = parse_proxy_pass(_find(loc.block, "proxy_pass")[-1]["args"][0])
            if target.port not in by_port:
                problems.append(f"location {loc.path}: upstream port {target.port} is published by "
                                "no container (a process on the host?); the registry maps each "
                                "route to a container")
        if problems:
            extra = as_extra(loc)
            if isinstance(extra, dict):
                extras.append(extra)
            else:
                where = f"location {loc.modifier + ' ' if loc.modifier else ''}{loc.path}"
                unexpressed += problems + [f"{where}: not an extra location either: {p}"
                                           for p in extra]
            continue
        services.append(_service(loc, target, by_port[target.port], units, by_compose, site))
    _fill_memory(services, notes)
    for net in live.get("network") or []:
        cfg = ((net.get("IPAM") or {}).get("Config") or [{}])[0]
        notes.append(f"{NETWORK} on the host: subnet {cfg.get('Subnet')}, gateway {cfg.get('Gateway')}, "
                     f"{len(net.get('Containers') or {})} containers attached")
    if not live.get("network"):
        notes.append(f"{NETWORK} does not exist on the host")
    return Imported(services, unexpressed, site, notes, extras)


def _service(loc: Location, target: Proxy, c: dict, units: dict, by_compose: dict,
             site: Site) -> dict:
    labels = _labels(c)
    container = c["Name"].lstrip("/")
    compose_file = (labels.get("com.docker.compose.project.config_files") or "").split(",")[0]
    unit = by_compose.get(compose_file)
    why: dict[str, str] = {}
    assumed: list[str] = []
    where = f"{loc.file}:{loc.line} location {loc.path}"
    if unit:
        name = _slug(unit.removesuffix(".service").removeprefix("watchme-"))
        why["name"] = f"from host: unit {unit}"
    else:
        name = _slug(container)
        why["name"] = f"from host: container {container} (no watchme-*.service runs its compose file)"
    description = units.get(unit, {}).get("description") if unit else None
    if description:
        why["description"] = f"from host: {unit} Description="
    else:
        description = f"{container} (imported)"
        assumed.append("description")
    entry: dict[str, Any] = {"name": name, "description": description, "container": container}
    why["container"] = f"from host: docker inspect (publishes port {target.port})"
    net = (c.get("NetworkSettings", {}).get("Networks") or {}).get(NETWORK)
    entry["ip"] = (net or {}).get("IPAddress") or None
    if entry["ip"] is None and net:
        ipam = (net.get("IPAMConfig") or {}).get("IPv4Address")
        entry["ip"] = ipam or None
    why["ip"] = f"from host: docker inspect {NETWORK}" if entry["ip"] else \
        f"from host: not on {NETWORK}"
    entry["port"] = target.port
    why["port"] = f"from host: proxy_pass ({where})"
    if not (8000 <= target.port <= 8099 or 9000 <= target.port <= 9099):
        entry["port_override"] = True
        why["port_override"] = "from host: the live port is outside the 8000/9000 conventions"
    entry["public_path"] = loc.path
    why["public_path"] = f"from host: {where}"
    entry["upstream_path"] = target.path if target.path is not None else loc.path
    why["upstream_path"] = f"from host: proxy_pass {_value(loc.block, 'proxy_pass')}"
    if target.host != "localhost":
        entry["upstream_host"] = target.host
        why["upstream_host"] = "from host: proxy_pass"
    headers = _headers(loc.block)
    methods = headers.get("Access-Control-Allow-Methods")
    if methods:
        entry["methods"] = [m.strip().upper() for m in methods.split(",") if m.strip()]
        why["methods"] = "from host: add_header Access-Control-Allow-Methods"
    else:
        assumed.append("methods")
    origin = headers.get("Access-Control-Allow-Origin")
    entry["cors_origins"] = [origin] if origin else []
    why["cors_origins"] = "from host: add_header Access-Control-Allow-Origin" if origin else \
        "from host: no CORS headers"
    body = _value(loc.block, "client_max_body_size")
    entry["max_body_size"] = body or site.server_body_size or NGINX_DEFAULT_BODY
    why["max_body_size"] = "from host: client_max_body_size" if body else \
        ("from host: server's client_max_body_size" if site.server_body_size else
         "from host: not set, nginx's default")
    entry["timeouts"] = {k: _value(loc.block, f"proxy_{k}_timeout") or NGINX_DEFAULT_TIMEOUT
                         for k in ("connect", "read", "send")}
    why["timeouts"] = "from host: proxy_*_timeout (unset ones: nginx's default 60s)"
    mem = _mem(c.get("HostConfig", {}).get("Memory") or 0)
    entry["memory_limit"] = mem
    why["memory_limit"] = "from host: HostConfig.Memory" if mem else "assumed"
    if not mem:
        assumed.append("memory_limit")
    entry["priority"] = ASSUMED_PRIORITY
    assumed.append("priority")
    why["priority"] = "assumed: the host has no notion of priority"
    assumed.append("probe")
    if compose_file:
        entry["compose_file"] = compose_file
        why["compose_file"] = "from host: label com.docker.compose.project.config_files"
    else:
        entry["compose_file"] = f"/home/ubuntu/{name}/docker-compose.prod.yml"
        assumed.append("compose_file")
        why["compose_file"] = "assumed: the container has no compose labels"
    entry["unit"] = unit or f"watchme-{name}.service"
    why["unit"] = f"from host: {unit}" if unit else "assumed: the seed's watchme-<name>.service"
    if not unit:
        assumed.append("unit")
    entry["assumed"] = assumed
    entry["_why"] = why
    return entry


def _fill_memory(services: list[dict], notes: list[str]) -> None:
    """Containers without a limit get an assumed share of what the budget leaves."""
    from watchme.settings import Settings

    defaults = Settings()
    HOST_MEMORY_MIB, OS_RESERVE_MIB = defaults.host_memory_mib, defaults.memory_os_reserve_mib

    def mib(v: str) -> int:
        return int(v[:-1]) * (1024 if v[-1] == "g" else 1)

    known = sum(mib(s["memory_limit"]) for s in services if s["memory_limit"])
    unknown = [s for s in services if not s["memory_limit"]]
    if not unknown:
        return
    share = max(8, (HOST_MEMORY_MIB - OS_RESERVE_MIB - known) // len(unknown) // 8 * 8)
    for s in unknown:
        s["memory_limit"] = f"{share}m"
        s["_why"]["memory_limit"] = "assumed: no limit on the host; an equal share of the budget left"
    notes.append(f"{len(unknown)} containers run without a memory limit; each got an assumed "
                 f"{share}m (the budget left after the limits read from the host)")


# ---------------------------------------------------------------- YAML out / merge

def _yaml():
    from ruamel.yaml import YAML

    y = YAML()
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 200
    return y


def header(site: Site, imported: Imported) -> str:
    lines = [
        "# Service registry imported from the live host by `watchme import` (read-only).",
        "# Each field says where it came from: `# from host: ...` or `# assumed: ...` (also in",
        "# the entry's `assumed:` list); check every assumed value before deploying.",
        "#",
        f"# Site {site.server_name}: listen {' / '.join(site.listen) or '?'}"
        f"{'; port 80 redirects to https' if site.redirect_http else ''}",
        "# TLS settings (group_data / --data, not registry fields):",
        f"#   tls_certificate: {site.tls.get('ssl_certificate', 'not found')}",
        f"#   tls_certificate_key: {site.tls.get('ssl_certificate_key', 'not found')}",
    ]
    for n in imported.notes:
        lines.append(f"# Note: {n}")
    if imported.extras:
        lines.append("# Locations that are no container service, kept as extra_locations (checked")
        lines.append("# and re-emitted from an allow-list): " +
                     ", ".join(e["location"] for e in imported.extras))
    if imported.unexpressed:
        lines.append("# Locations the registry cannot express (NOT in this file):")
        lines += [f"#   {p}" for p in imported.unexpressed]
    return "\n".join(lines) + "\n"


def to_commented(entry: dict, supports_unit: bool):
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    why = entry["_why"]
    m = CommentedMap()
    for key, value in entry.items():
        if key == "_why" or (key == "unit" and not supports_unit):
            continue
        if isinstance(value, list):
            seq = CommentedSeq(value)
            seq.fa.set_flow_style()
            value = seq
        elif isinstance(value, dict):
            sub = CommentedMap(value)
            sub.fa.set_flow_style()
            value = sub
        m[key] = value
        if key in why:
            m.yaml_add_eol_comment(why[key], key)
    return m


def extra_commented(extra: dict):
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.scalarstring import LiteralScalarString

    m = CommentedMap()
    m["location"] = extra["location"]
    m.yaml_add_eol_comment(extra["_why"], "location")
    m["config"] = LiteralScalarString(extra["config"])
    return m


def render(imported: Imported) -> str:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from watchme.registry import Service

    supports_unit = "unit" in Service.model_fields
    doc = CommentedMap()
    doc["services"] = CommentedSeq([to_commented(e, supports_unit) for e in imported.services])
    if imported.extras:
        doc["extra_locations"] = CommentedSeq([extra_commented(e) for e in imported.extras])
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    return header(imported.site, imported) + "\n" + buf.getvalue()


def _set_eol_comment(m, key: str, text: str) -> None:
    """Replace key's end-of-line comment; ruamel keeps the full-line comments that follow
    it in the same token, and those are the operator's: they stay."""
    token = m.ca.items.get(key, [None, None, None, None])[2]
    if token is None:
        m.yaml_add_eol_comment(text, key)
        return
    first, nl, rest = token.value.partition("\n")
    if first.strip().startswith("#"):
        token.value = f"# {text}{nl}{rest}"
    else:  # no comment on the key's own line, only lines after it
        token.value = f"  # {text}\n{first}{nl}{rest}" if first.strip() else f"  # {text}{nl}{rest}"


def merge(existing_text: str, imported: Imported) -> str:
    """EXISTING with the host's values; its comments, order and hand-written values of
    fields the import only assumed are kept."""
    from watchme.registry import Service

    supports_unit = "unit" in Service.model_fields
    y = _yaml()
    doc = y.load(existing_text)
    entries = doc["services"]
    for new in imported.services:
        old = next((e for e in entries if e.get("container") == new["container"]), None) or \
              next((e for e in entries if e.get("name") == new["name"]), None)
        if old is None:
            entries.append(to_commented(new, supports_unit))
            continue
        assumed_new = set(new["assumed"])
        for key, value in new.items():
            if key in ("_why", "assumed") or (key == "unit" and not supports_unit):
                continue
            if key in assumed_new and key in old:
                continue  # a hand-written value beats a guess
            if key == "name" and "name" in old:
                continue  # keep the registry's name (units and docs refer to it)
            if key == "timeouts" and isinstance(old.get(key), dict):
                for k, v in value.items():
                    old[key][k] = v
                continue
            if old.get(key) != value:
                old[key] = value
                _set_eol_comment(old, key, new["_why"].get(key, "from host"))
        still = [f for f in old.get("assumed", []) if f in assumed_new]
        if "assumed" in old:
            old["assumed"][:] = still
    if imported.extras:
        from ruamel.yaml.comments import CommentedSeq

        if doc.get("extra_locations") is None:
            doc["extra_locations"] = CommentedSeq()
        kept = doc["extra_locations"]
        for extra in imported.extras:
            old = next((e for e in kept if " ".join(str(e.get("location", "")).split())
                        == extra["location"]), None)
            if old is None:
                kept.append(extra_commented(extra))
            elif old.get("config") != extra["config"]:
                kept[kept.index(old)] = extra_commented(extra)  # the host's block wins
    buf = io.StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


# ---------------------------------------------------------------- CLI

def _validate(text: str) -> str:
    """The registry's own checks on what was written ('' when it loads)."""
    import yaml

    from watchme.registry import RegistryError, load_data

    try:
        load_data(yaml.safe_load(text))
    except RegistryError as e:
        return str(e)
    return ""


def read_live(data: dict | None):
    from watchme import inspect

    state, failed = inspect.connect(data)
    results = inspect.facts(LiveServer, state=state)
    return results, failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="watchme import", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="registry file to write")
    p.add_argument("--merge", metavar="EXISTING", help="registry to update (comments kept)")
    p.add_argument("--allow-unexpressed", action="store_true",
                   help="exit 0 even when some locations cannot be expressed")
    p.add_argument("--facts", help="read recorded facts (JSON of the host's answer) instead "
                                   "of connecting (tests, offline review)")
    p.add_argument("--record", metavar="FILE", help="also save the host's answer (for --facts)")
    p.add_argument("--data", action="append", metavar="KEY=VALUE", help="as for pyinfra")
    args = p.parse_args(argv)

    if args.facts:
        live = json.loads(Path(args.facts).read_text())
    else:
        from watchme import inspect

        try:
            data = inspect.parse_data(args.data)
            inspect.root()
        except ValueError as e:  # bad --data, or no checkout here
            print(f"watchme import: {e}", file=sys.stderr)
            return 2
        results, failed = read_live(data)
        if failed or len(results) != 1:
            why = "; ".join(f"{h}: {w}" for h, w in failed.items()) or \
                f"{len(results)} hosts answered; import reads exactly one (set WATCHME_HOSTS to one host)"
            print(f"watchme import: {why}", file=sys.stderr)
            return 1
        (_, live), = results.values()
        if isinstance(live, Exception) or live is None:
            print(f"watchme import: reading the host failed: {live}", file=sys.stderr)
            return 1
        if args.record:
            Path(args.record).write_text(json.dumps(live, indent=1, ensure_ascii=False) + "\n")
    try:
        imported = build(live)
    except ImportProblem as e:
        print(f"watchme import: {e}", file=sys.stderr)
        return 1
    if args.merge:
        before = Path(args.merge).read_text()
        text = merge(before, imported)
        sys.stdout.writelines(difflib.unified_diff(before.splitlines(True), text.splitlines(True),
                                                   args.merge, args.output))
    else:
        text = render(imported)
    Path(args.output).write_text(text)
    print(f"watchme import: {len(imported.services)} services written to {args.output}",
          file=sys.stderr)
    invalid = _validate(text)
    if invalid:
        print(f"watchme import: {args.output} does not pass the registry checks yet; fix these "
              f"before deploying:\n{invalid}", file=sys.stderr)
        return 1
    for n in imported.notes:
        print(f"note: {n}", file=sys.stderr)
    for problem in imported.unexpressed:
        print(f"not expressed: {problem}", file=sys.stderr)
    if imported.unexpressed and not args.allow_unexpressed:
        print(f"watchme import: {len(imported.unexpressed)} location problem(s) above are not in "
              f"{args.output}; add them to the registry by hand or rerun with --allow-unexpressed",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
