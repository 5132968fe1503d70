"""The service registry (group_data/services.yaml): models, loading and every check.

load() either returns a Registry that nginx, systemd and the probes can be generated from,
or raises RegistryError listing every problem, one per line, as `services[NAME].FIELD: ...`
with the fix, so one run shows everything to correct.

Every value here ends up in an nginx site, a systemd unit or a root shell command, so each
field accepts only what its consumer reads literally: no control characters anywhere, no
shell or nginx metacharacters, integers that are integers. Checks that depend on the
deploy's settings (subnet, gateway, memory, the infrastructure unit) take a Settings
(watchme/settings.py); the file is WATCHME_REGISTRY or group_data/services.yaml.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool,
                      StrictInt, StrictStr, ValidationError, model_validator)

from watchme import extra_locations
from watchme.settings import AbsPath, ConfigError, HostName, Settings, pattern
from watchme.uri import normalize, upstream_uri

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "group_data" / "services.yaml"
PORT_RANGES = [(8000, 8099), (9000, 9099)]  # seed: 8000s APIs, 9000s admin tools
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

# Units a service's `unit` may never be: the project's own and the system's. A service unit
# linked under one of these names would replace it (sshd: the way in; nginx: the site).
PROJECT_UNITS = frozenset({"watchme-infrastructure.service", "watchme-guard.service",
                           "watchme-guard.timer"})
SYSTEM_UNITS = frozenset({
    "ssh", "sshd", "nginx", "docker", "containerd", "cron", "crond", "anacron", "atd", "dbus",
    "dbus-broker", "networking", "network", "NetworkManager", "getty", "serial-getty",
    "console-getty", "rsyslog", "syslog", "auditd", "polkit", "snapd", "ufw", "apparmor",
    "unattended-upgrades", "apt-daily", "apt-daily-upgrade", "certbot", "chrony", "chronyd",
    "ntp", "ntpsec", "cloud-init", "cloud-init-local", "cloud-config", "cloud-final",
    "amazon-ssm-agent", "snap.amazon-ssm-agent.amazon-ssm-agent", "ec2-instance-connect",
    "multipathd", "iscsid", "udisks2", "irqbalance", "accounts-daemon", "sudo", "user",
    "emergency", "rescue", "reboot", "poweroff", "halt", "kexec", "default", "multi-user",
    "graphical", "basic", "sysinit", "shutdown", "initrd", "local-fs", "remote-fs", "swap",
})
SYSTEM_UNIT_PREFIXES = ("systemd-", "dbus-", "docker-", "containerd-", "getty", "user-", "snap-")

# Addresses an upstream may never point at: nginx would hand clients the instance's
# cloud credentials. Link-local (169.254.0.0/16, fe80::/10) covers AWS/GCP/Azure IMDS.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16"))
METADATA_NAMES = frozenset({"metadata", "metadata.google.internal", "instance-data",
                            "instance-data.ec2.internal", "metadata.azure.internal"})


def _check(regex: str, fix: str):
    """A string field: strict str, no control character, fully matching regex (ASCII)."""
    return pattern(regex, fix)


_NGINX_TIME_UNITS = ["y", "M", "w", "d", "h", "m", "s", "ms"]  # ngx_parse_time's order


def _nginx_time(value: str) -> str:
    """nginx's time: units in descending order, each at most once ("1m30s"), a bare
    number is seconds; no spaces (the directive would get two arguments)."""
    parts = re.findall(r"(\d{1,6})(ms|[yMwdhms])?", value, re.ASCII)
    order = [_NGINX_TIME_UNITS.index(u or "s") for _, u in parts]
    if "".join(n + u for n, u in parts) != value or not parts or order != sorted(set(order)) \
            or (len(parts) > 1 and not parts[-1][1]):
        raise ValueError(f"{value!r} is invalid; use an nginx time like 5s, 300s, 1m or 1m30s "
                         "(no spaces, largest unit first)")
    return value


def _upstream_host(value: str) -> str:
    """A DNS name or a dotted IPv4 address that is not link-local, metadata or 0.0.0.0."""
    if value.lower().rstrip(".") in METADATA_NAMES:
        raise ValueError(f"{value!r} is a cloud metadata service; point upstream_host at the "
                         "service (localhost or its container)")
    try:  # inet_aton is what the resolver accepts: 2852039166 and 0xa9.254.169.254 are IPs too
        address = ipaddress.ip_address(socket.inet_aton(value))
    except OSError:
        return value
    if address.is_link_local or address in METADATA_ADDRESSES or address.is_unspecified:
        raise ValueError(f"{value!r} is a link-local, metadata or unspecified address; point "
                         "upstream_host at the service (localhost or its container)")
    if str(address) != value:
        raise ValueError(f"{value!r} is an IPv4 address in an unusual form; write it as {address}")
    return value


def _upstream_host_before(value: Any) -> Any:
    """Name IPv6 link-local/metadata literals before the name pattern rejects them."""
    if isinstance(value, str) and ":" in value:
        try:
            address = ipaddress.ip_address(value.strip("[]"))
        except ValueError:
            return value
        why = "a link-local or metadata address" if (
            address.is_link_local or address in METADATA_ADDRESSES or address.is_unspecified) \
            else "an IPv6 literal"
        raise ValueError(f"{value!r} is {why}; use localhost, a host name or an IPv4 address")
    return value


def reserved_unit(unit: str) -> bool:
    """A unit name of this project or of the system, never a service's."""
    stem = unit.rsplit(".", 1)[0]
    return unit in PROJECT_UNITS or stem in SYSTEM_UNITS or stem.startswith(SYSTEM_UNIT_PREFIXES)


def _ipv4(value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string; write the address like 172.27.0.20 (or null)")
    return value


# nginx sizes (client_max_body_size): a number with an optional k/m/g suffix, e.g. 10M.
Size = Annotated[StrictStr, _check(r"\d{1,9}[kKmMgG]?", "use an nginx size like 512k, 1m or 10M")]
Time = Annotated[StrictStr, _check(r"[0-9a-zA-Z]{1,40}", "use an nginx time like 5s, 300s or 1m"),
                 AfterValidator(_nginx_time)]
UrlPath = Annotated[StrictStr, _check(r"/[A-Za-z0-9._~/-]{0,200}",
                                      "start with '/' and use only letters, digits and ._~-/")]
Slug = Annotated[StrictStr, _check(r"[a-z][a-z0-9-]{0,47}", "use lowercase letters, digits and '-' "
                                                             "(at most 48), starting with a letter")]
Method = Annotated[StrictStr, _check("|".join(sorted(METHODS)),
                                     f"use one of {', '.join(sorted(METHODS))} (uppercase)")]
Origin = Annotated[StrictStr, _check(r"\*|https?://[A-Za-z0-9.-]{1,253}(:\d{1,5})?",
                                     "use '*' or an origin like https://hey-watch.me")]
# Unit files read '%' as a specifier and a trailing '\' as a line continuation.
Description = Annotated[StrictStr, _check(r"[^%\\]{1,200}", "give a one-line description of at most "
                                          "200 characters, without '%' or '\\' (systemd reads them)")]
ProbePath = Annotated[StrictStr, _check(
    r"([A-Za-z0-9._~-][A-Za-z0-9._~/-]{0,200})?(\?[A-Za-z0-9._~=-]{0,200})?",
    "give a path relative to public_path, without a leading '/', of letters, digits and ._~-/, "
    "with an optional ?query of letters, digits and ._~=- (no quotes, $, &, ; or spaces)")]
UnitName = Annotated[StrictStr, _check(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.service",
                                       "use letters, digits and _.- ending in .service")]
UpstreamHost = Annotated[HostName, BeforeValidator(_upstream_host_before), AfterValidator(_upstream_host)]


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    connect: Time = "5s"
    read: Time = "60s"
    send: Time = "60s"


class Probe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: ProbePath = ""
    expect: StrictInt = Field(200, ge=100, le=599)


class Service(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Slug
    description: Description
    container: Annotated[StrictStr, _check(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", "use a Docker container name")]
    # required: null only for a service off watchme-network
    ip: Annotated[ipaddress.IPv4Address | None, BeforeValidator(_ipv4)]
    port: StrictInt = Field(ge=1, le=65535)
    port_override: StrictBool = False
    public_path: UrlPath
    upstream_path: UrlPath
    upstream_host: UpstreamHost = "localhost"
    methods: list[Method] = ["GET", "POST", "OPTIONS"]
    cors_origins: list[Origin] = []  # empty: nginx sends no CORS headers
    max_body_size: Size = "1m"
    max_body_unlimited: StrictBool = False  # the only way to say max_body_size: 0 (no limit)
    timeouts: Timeouts = Timeouts()
    probe: Probe = Probe()
    memory_limit: Annotated[StrictStr, _check(r"[1-9]\d{0,5}[mMgG]", "use Docker's <n>m or <n>g, e.g. 64m or 1g")]
    priority: StrictInt = Field(ge=1, le=1000)
    compose_file: AbsPath
    unit: UnitName | None = None  # systemd unit file name; default watchme-<name>.service (seed)
    # inventory host name (WATCHME_HOSTS name=...) that runs it; default: the front (first) host
    host: Annotated[StrictStr, _check(r"[A-Za-z0-9_.:-]{1,100}", "use an inventory host name "
                                      "(the name= of a WATCHME_HOSTS entry)")] | None = None
    enabled: StrictBool = True
    start: StrictBool = True  # start the unit now, not only enable it at boot (enabled services only)
    assumed: list[StrictStr] = []

    @model_validator(mode="after")
    def _default_unit(self) -> "Service":
        if self.unit is None:
            self.unit = f"watchme-{self.name}.service"
        return self

    @property
    def memory_mib(self) -> int:
        n, unit = int(self.memory_limit[:-1]), self.memory_limit[-1].lower()
        return n * 1024 if unit == "g" else n

    @property
    def upstream_base(self) -> str:
        return f"http://{self.upstream_host}:{self.port}"

    @property
    def upstream_url(self) -> str:
        """The proxy_pass target, e.g. http://localhost:8015/api/scheduler/."""
        return self.upstream_base + self.upstream_path

    @property
    def probe_url_path(self) -> str:
        return self.public_path + self.probe.path

    def problems(self) -> list[tuple[str, str]]:
        """Checks that need several fields; (field, message) pairs."""
        out = []
        if not self.port_override and not any(lo <= self.port <= hi for lo, hi in PORT_RANGES):
            out.append(("port", f"{self.port} is outside the port conventions (8000-8099 APIs, "
                                "9000-9099 admin tools); pick a free port there or set port_override: true"))
        if self.unit is not None and reserved_unit(self.unit):
            fix = "rename the service" if self.unit == f"watchme-{self.name}.service" else \
                "keep the default watchme-<name>.service or pick another unit name"
            out.append(("unit", f"{self.unit} is a unit of the system or of this project "
                                f"(see watchme/registry.py PROJECT_UNITS, SYSTEM_UNITS); {fix}"))
        pub, up = self.public_path, self.upstream_path
        try:
            normal = normalize(pub)
        except ValueError as e:  # '/../' climbs above the root: nginx answers 400 to it
            normal = None
            out.append(("public_path", f"{e}, so nginx answers 400 Bad Request to it; "
                                       "write the path without '..' segments"))
        if normal is None:
            pass  # reported above
        elif normal != pub:
            out.append(("public_path", f"{pub!r} is not a normalised path, so nginx never matches it; "
                                       f"write {normal!r}"))
        # nginx replaces the matched prefix by upstream_path, so their trailing slashes must agree.
        elif pub.endswith("/") != up.endswith("/"):
            example = pub.rstrip("/") + "/foo"
            sent = upstream_uri(pub, self.upstream_url, example)
            fix = f"end upstream_path with '/' ({up + '/'!r})" if pub.endswith("/") else \
                "end public_path with '/' (the seed's rule for every location)"
            out.append(("upstream_path", f"public_path {pub!r} and upstream_path {up!r} disagree on the "
                                         f"trailing slash: nginx would send {example} upstream as {sent}; {fix}"))
        zero = int(re.match(r"\d+", self.max_body_size, re.ASCII)[0]) == 0
        if zero and not self.max_body_unlimited:
            out.append(("max_body_size", f"{self.max_body_size!r} means unlimited to nginx; give a limit "
                                         "like 10m, or set max_body_unlimited: true to mean it"))
        if self.max_body_unlimited and not zero:
            out.append(("max_body_unlimited", f"true, but max_body_size is {self.max_body_size!r}; "
                                              "set max_body_size: 0 or drop max_body_unlimited"))
        fields = type(self).model_fields
        for f in self.assumed:
            if f not in fields:
                out.append(("assumed", f"{f!r} is not a field name; list only fields: {', '.join(fields)}"))
        return out


class RegistryError(ConfigError):
    """Problems of the registry, one per line: `services[NAME].FIELD: problem; fix`."""


class ExtraLocation(BaseModel):
    """A hand-written location of the live site that is no container service (watchme/
    extra_locations.py): kept by adoption, re-emitted by crossplane from an allow-list."""

    model_config = ConfigDict(extra="forbid")
    location: StrictStr  # "= /health" or "/status/"
    config: StrictStr  # the block's directives, parsed and checked, never copied as text

    @model_validator(mode="after")
    def _parses(self) -> "ExtraLocation":
        extra_locations.parse(self.location, self.config)
        return self

    @property
    def path(self) -> str:
        return extra_locations.split_match(self.location)[1]

    def nginx(self, indent: int = 4) -> str:
        return extra_locations.nginx(extra_locations.parse(self.location, self.config), indent)

    @property
    def probe_status(self) -> int:
        """What the safe cycle's probe expects: the `return` status, else 200 (proxied)."""
        block = extra_locations.parse(self.location, self.config)[0]["block"]
        returns = [d["args"][0] for d in block if d["directive"] == "return"]
        return int(returns[0]) if returns else 200


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    services: list[Service]
    extra_locations: list[ExtraLocation] = []

    @property
    def enabled_services(self) -> list[Service]:
        return [s for s in self.services if s.enabled]

    def by_name(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(f"no service {name!r}; known: {', '.join(s.name for s in self.services)}")

    def problems(self, settings: Settings) -> list[str]:
        """The checks that depend on the deploy's settings, as complete lines."""
        out = []
        net, gw = settings.network_subnet, settings.network_gateway
        reserved = (gw, net.network_address, net.broadcast_address)
        for s in self.services:
            if s.ip is not None and (s.ip not in net or s.ip in reserved):
                out.append(f"services[{s.name}].ip: {s.ip} is not a usable address of {settings.network_name} "
                           f"{net} (gateway {gw}); pick a free address in it, or null if off the network")
            elif s.ip is not None and s.ip in settings.dynamic_range:
                out.append(f"services[{s.name}].ip: {s.ip} is in network_ip_range {settings.dynamic_range}, "
                           "where Docker picks dynamic addresses; pick one outside it")
            if s.unit == settings.infra_unit:
                out.append(f"services[{s.name}].unit: {s.unit} is the infrastructure unit (infra_unit); "
                           "pick another name")
        first: dict[str, str] = {}
        for s in self.services:
            if s.unit in first:
                out.append(f"services[{s.name}].unit: {s.unit} is also the unit of services[{first[s.unit]}]; "
                           "give each service its own unit")
            first.setdefault(s.unit, s.name)
        reserve, total = settings.memory_os_reserve_mib, settings.host_memory_mib
        placed = sorted({s.host or "" for s in self.enabled_services})
        for where in placed:  # one budget per host: each host holds only its own services
            used = sum(s.memory_mib for s in self.enabled_services if (s.host or "") == where)
            if used + reserve > total:
                on = f" on host {where}" if where else ""
                out.append(f"services: memory limits of enabled services{on} sum to {used} MiB + "
                           f"{reserve} MiB OS reserve > {total} MiB; lower memory_limit, disable a "
                           "low-priority service or place one on another host (host:)")
        return out

    def check(self, settings: Settings) -> None:
        problems = self.problems(settings)
        if problems:
            raise RegistryError(problems)


def _describe(label: str, err: dict) -> str:
    """One pydantic error as `services[label].field: message`."""
    loc = [str(p) for p in err["loc"]]
    where = f"services[{label}]" + "".join(f".{p}" if not p.isdigit() else f"[{p}]" for p in loc)
    if err["type"] == "extra_forbidden":
        model: Any = Service
        for p in loc[:-1]:  # walk to the nested model (timeouts, probe) that has the bad key
            model = model.model_fields[p].annotation
        allowed = list(model.model_fields)
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{where}: unknown key; {hint}allowed keys: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"{where}: required field is missing; add it to the entry"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"


def _duplicates(entries: list[Any], labels: list[str]) -> list[str]:
    """Fields that must be unique, compared on the raw entries so that entries with other
    problems are still checked."""
    out = []
    for field in ("name", "public_path", "port", "container", "ip"):
        first: dict[str, int] = {}
        for i, entry in enumerate(entries):
            value = entry.get(field) if isinstance(entry, dict) else None
            if value is None or isinstance(value, (list, dict)):
                continue
            if str(value) not in first:
                first[str(value)] = i
            elif field == "name":  # same label twice: say which positions
                out.append(f"services[{labels[i]}].name: {value!r} names entries {first[str(value)] + 1} "
                           f"and {i + 1}; rename one")
            else:
                out.append(f"services[{labels[i]}].{field}: {str(value)!r} is also used by "
                           f"services[{labels[first[str(value)]]}]; give each service its own {field}")
    return out


def _label(entry: Any, i: int) -> str:
    """services[LABEL]: the entry's name when it is a valid name, else its position (#3), so an
    error message never prints a raw value."""
    name = entry.get("name") if isinstance(entry, dict) else None
    return name if isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9-]{0,47}", name, re.ASCII) \
        else f"#{i + 1}"


def _extras(raw: Any, entries: list[Any]) -> tuple[list[ExtraLocation], list[str]]:
    """extra_locations entries, checked; a location a service also serves is refused."""
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        return [], ["extra_locations: expected a list of {location, config} entries"]
    out, problems, seen = [], [], {}
    paths = {e.get("public_path") for e in entries if isinstance(e, dict)}
    for i, entry in enumerate(raw):
        where = f"extra_locations[{i + 1}]"
        try:
            extra = ExtraLocation.model_validate(entry)
        except ValidationError as e:
            for err in e.errors():
                field = ".".join(str(p) for p in err["loc"])
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(f"{where}{'.' + field if field else ''}: {msg}; fix the entry "
                                "or serve the route from a registry service")
            continue
        key = " ".join(extra.location.split())
        if key in seen:
            problems.append(f"{where}.location: {key!r} is also extra_locations[{seen[key]}]")
        elif key in paths:
            problems.append(f"{where}.location: {key!r} is also a service's public_path; keep one")
        seen.setdefault(key, i + 1)
        out.append(extra)
    return out, problems


def load_data(data: Any, settings: Settings | None = None) -> Registry:
    """The registry of parsed YAML, checked field by field and against settings (the
    defaults of group_data/all.py when None)."""
    if not isinstance(data, dict) or not isinstance(data.get("services"), list):
        raise RegistryError(["registry: expected a mapping with a 'services:' list of entries"])
    problems = [f"registry: unknown top-level key {k!r}; allowed keys: services, extra_locations"
                for k in data if k not in ("services", "extra_locations")]
    services, labels = [], []
    for i, entry in enumerate(data["services"]):
        label = _label(entry, i)
        labels.append(label)
        try:
            service = Service.model_validate(entry)
        except ValidationError as e:
            problems += [_describe(label, err) for err in e.errors()]
            continue
        problems += [f"services[{label}].{f}: {msg}" for f, msg in service.problems()]
        services.append(service)
    problems += _duplicates(data["services"], labels)
    extras, extra_problems = _extras(data.get("extra_locations"), data["services"])
    problems += extra_problems
    registry = Registry.model_construct(services=services, extra_locations=extras)
    problems += registry.problems(settings or Settings())
    if problems:
        raise RegistryError(problems)
    return registry


def registry_path() -> Path:
    """The registry every command reads: WATCHME_REGISTRY, else group_data/services.yaml."""
    return Path(os.environ.get("WATCHME_REGISTRY") or DEFAULT_PATH)


def load(path: str | Path | None = None, settings: Settings | None = None) -> Registry:
    path = Path(path) if path else registry_path()
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RegistryError([f"{path}: cannot read the registry: {e}"]) from e
    return load_data(data, settings)
