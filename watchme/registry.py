"""The service registry (group_data/services.yaml): models, loading and every check.

load() either returns a Registry that nginx, systemd and the probes can be generated from,
or raises RegistryError listing every problem, one per line, as `services[NAME].FIELD: ...`
with the fix, so one run shows everything to correct.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from watchme.routes import upstream_uri

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "group_data" / "services.yaml"
NETWORK = ipaddress.ip_network("172.27.0.0/16")  # watchme-network (seed)
GATEWAY = ipaddress.ip_address("172.27.0.1")  # taken by Docker, never a container's
PORT_RANGES = [(8000, 8099), (9000, 9099)]  # seed: 8000s APIs, 9000s admin tools
HOST_MEMORY_MIB, OS_RESERVE_MIB = 1900, 300  # t4g.small: ~1.8 GiB usable (seed)
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def _check(pattern: str, fix: str):
    """A validator accepting strings that fully match pattern; the error says how to fix."""
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise ValueError(f"{value!r} is invalid; {fix}")
        return value
    return AfterValidator(check)


# nginx sizes (client_max_body_size): a number with an optional k/m/g suffix, e.g. 10M.
Size = Annotated[str, _check(r"\d+[kKmMgG]?", "use an nginx size like 512k, 1m or 10M")]
# nginx times: a number with a unit, optionally combined ("1m 30s"); bare numbers are seconds.
_T = r"\d+(ms|[smhdwMy])?"
Time = Annotated[str, _check(rf"{_T}( ?{_T})*", "use an nginx time like 5s, 300s or 1m")]
UrlPath = Annotated[str, _check(r"/[A-Za-z0-9._~/-]*", "start with '/' and use only URL path characters")]
Slug = Annotated[str, _check(r"[a-z][a-z0-9-]*", "use lowercase letters, digits and '-'")]
Method = Annotated[str, _check("|".join(sorted(METHODS)), f"use one of {', '.join(sorted(METHODS))} (uppercase)")]
Origin = Annotated[str, _check(r"\*|https?://[A-Za-z0-9.-]+(:\d+)?", "use '*' or an origin like https://hey-watch.me")]


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    connect: Time = "5s"
    read: Time = "60s"
    send: Time = "60s"


class Probe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Annotated[str, _check(r"([A-Za-z0-9._~-][A-Za-z0-9._~/-]*)?(\?\S*)?",
                                "give a path relative to public_path, without a leading '/'")] = ""
    expect: int = Field(200, ge=100, le=599)


class Service(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Slug
    description: Annotated[str, _check(r"[^\n]+", "give a one-line description")]
    container: Annotated[str, _check(r"[A-Za-z0-9][A-Za-z0-9_.-]*", "use a Docker container name")]
    ip: ipaddress.IPv4Address | None  # required: null only for a service off watchme-network
    port: int = Field(ge=1, le=65535)
    port_override: bool = False
    public_path: UrlPath
    upstream_path: UrlPath
    upstream_host: Annotated[str, _check(r"[A-Za-z0-9.-]+", "use a host name")] = "localhost"
    methods: list[Method] = ["GET", "POST", "OPTIONS"]
    cors_origins: list[Origin] = []  # empty: nginx sends no CORS headers
    max_body_size: Size = "1m"
    timeouts: Timeouts = Timeouts()
    probe: Probe = Probe()
    memory_limit: Annotated[str, _check(r"[1-9]\d*[mMgG]", "use Docker's <n>m or <n>g, e.g. 64m or 1g")]
    priority: int = Field(ge=1)
    compose_file: Annotated[str, _check(r"/\S+", "give the absolute path on the host")]
    enabled: bool = True
    start: bool = True  # start the unit now, not only enable it at boot (enabled services only)
    assumed: list[str] = []

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
        reserved = (GATEWAY, NETWORK.network_address, NETWORK.broadcast_address)
        if self.ip is not None and (self.ip not in NETWORK or self.ip in reserved):
            out.append(("ip", f"{self.ip} is not a usable address of watchme-network {NETWORK} "
                              f"(gateway {GATEWAY}); pick a free address in it, or null if off the network"))
        # nginx replaces the matched prefix by upstream_path, so their trailing slashes must agree.
        pub, up = self.public_path, self.upstream_path
        if pub.endswith("/") != up.endswith("/"):
            example = pub.rstrip("/") + "/foo"
            sent = upstream_uri(pub, self.upstream_url, example)
            fix = f"end upstream_path with '/' ({up + '/'!r})" if pub.endswith("/") else \
                "end public_path with '/' (the seed's rule for every location)"
            out.append(("upstream_path", f"public_path {pub!r} and upstream_path {up!r} disagree on the "
                                         f"trailing slash: nginx would send {example} upstream as {sent}; {fix}"))
        fields = type(self).model_fields
        for f in self.assumed:
            if f not in fields:
                out.append(("assumed", f"{f!r} is not a field name; list only fields: {', '.join(fields)}"))
        return out


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    services: list[Service]

    @property
    def enabled_services(self) -> list[Service]:
        return [s for s in self.services if s.enabled]

    def by_name(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(f"no service {name!r}; known: {', '.join(s.name for s in self.services)}")


class RegistryError(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


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
                out.append(f"services[{value}].name: {value!r} names entries {first[str(value)] + 1} "
                           f"and {i + 1}; rename one")
            else:
                out.append(f"services[{labels[i]}].{field}: {str(value)!r} is also used by "
                           f"services[{labels[first[str(value)]]}]; give each service its own {field}")
    return out


def load_data(data: Any) -> Registry:
    if not isinstance(data, dict) or not isinstance(data.get("services"), list):
        raise RegistryError(["registry: expected a mapping with a 'services:' list of entries"])
    problems = [f"registry: unknown top-level key {k!r}; allowed keys: services" for k in data if k != "services"]
    services, labels = [], []
    for i, entry in enumerate(data["services"]):
        name = entry.get("name") if isinstance(entry, dict) else None
        label = name if isinstance(name, str) and name else f"#{i + 1}"
        labels.append(label)
        try:
            service = Service.model_validate(entry)
        except ValidationError as e:
            problems += [_describe(label, err) for err in e.errors()]
            continue
        problems += [f"services[{label}].{f}: {msg}" for f, msg in service.problems()]
        services.append(service)
    problems += _duplicates(data["services"], labels)
    used = sum(s.memory_mib for s in services if s.enabled)
    if used + OS_RESERVE_MIB > HOST_MEMORY_MIB:
        problems.append(f"services: memory limits of enabled services sum to {used} MiB + {OS_RESERVE_MIB} MiB "
                        f"OS reserve > {HOST_MEMORY_MIB} MiB; lower memory_limit or disable a low-priority service")
    if problems:
        raise RegistryError(problems)
    return Registry(services=services)


def load(path: str | Path | None = None) -> Registry:
    path = Path(path) if path else DEFAULT_PATH
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RegistryError([f"{path}: cannot read the registry: {e}"]) from e
    return load_data(data)
