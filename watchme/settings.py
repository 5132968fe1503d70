"""The deploy's settings: every key of group_data/all.py, typed, bounded and described.

group_data/all.py holds the defaults (one comment per key); per-group files and
`--data key=value` override them per host. validate(data) checks the values a host
actually gets and returns a Settings, or raises SettingsError listing every problem, one per
line, as `settings.KEY: problem; fix` (the shape of RegistryError's messages).

When it runs:
- group_data/all.py validates its defaults merged with the run's `--data` pairs (cli_data),
  before pyinfra connects anywhere;
- the deploy calls require(host) first thing, for the effective per-host values (group files,
  inventory data and overrides included), before any operation.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import unicodedata
from typing import Annotated, Any

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool,
                      StrictFloat, StrictInt, StrictStr, ValidationError)


class ConfigError(Exception):
    """Bad configuration: `problems` are complete lines, `WHERE: problem; fix`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class SettingsError(ConfigError):
    pass


def control_character(value: str) -> str | None:
    """The first character that could end a line or hide text in a config or a shell
    (C0/C1 controls, DEL, Unicode line/paragraph separators and format characters), as U+XXXX."""
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            return f"U+{ord(ch):04X}"
    return None


def pattern(regex: str, fix: str):
    """A validator for strings: no control character, and the whole value matches regex (ASCII
    classes: \\d is 0-9 only). The error says how to fix it."""
    compiled = re.compile(regex, re.ASCII)

    def check(value: str) -> str:
        bad = control_character(value)
        if bad:
            raise ValueError(f"contains the control character {bad}; write it on one line "
                             "with printable characters only")
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is invalid; {fix}")
        return value
    return AfterValidator(check)


def _abs_path(value: str) -> str:
    if value != posixpath.normpath(value) or value.startswith("//"):
        raise ValueError(f"{value!r} is not a normalised path; write it as "
                         f"{posixpath.normpath('/' + value.lstrip('/'))!r}")
    return value


# An absolute, normalised path of safe characters (it reaches shells, units and nginx).
AbsPath = Annotated[StrictStr, pattern(r"/[A-Za-z0-9._+@/-]*",
                                       "give an absolute path of letters, digits and ._+@-/"),
                    AfterValidator(_abs_path)]
HostName = Annotated[StrictStr, pattern(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                                        r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
                                        "use a DNS name like api.hey-watch.me")]
UnitName = Annotated[StrictStr, pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.service",
                                        "use a systemd unit name of letters, digits and _.- "
                                        "ending in .service")]
Package = Annotated[StrictStr, pattern(r"[a-z0-9][a-z0-9+.-]+", "use a Debian package name")]
Account = Annotated[StrictStr, pattern(r"[a-z_][a-z0-9_-]{0,31}", "use a Unix user or group name")]
# --data turns 755 or 300 into integers; these keys are strings of digits or a time span.
_digits = BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v)
Mode = Annotated[StrictStr, _digits, pattern(r"[0-7]{3,4}", "use an octal mode like 755")]
TimeSpan = Annotated[StrictStr, _digits, pattern(r"([1-9]\d*(us|ms|s|sec|min|m|h|d|w)? ?)+",
                                                 "use a systemd time span like 5min or 300s")]


def _ipv4_network(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("give the subnet as a string like 172.27.0.0/16")
    try:
        return ipaddress.IPv4Network(value)
    except ValueError as e:
        raise ValueError(f"{value!r} is not an IPv4 network ({e}); use e.g. 172.27.0.0/16") from None


def _ipv4_address(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("give the address as a string like 172.27.0.1")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address; use e.g. 172.27.0.1") from None


Subnet = Annotated[ipaddress.IPv4Network, BeforeValidator(_ipv4_network)]
IPv4 = Annotated[ipaddress.IPv4Address, BeforeValidator(_ipv4_address)]


def _f(default: Any, description: str, **kw: Any) -> Any:
    return Field(default, description=description, **kw)


class Settings(BaseModel):
    """One field per key of group_data/all.py (`registry` excepted: watchme/registry.py)."""

    # Host data also holds pyinfra's own keys (ssh_*) and keys of other tasks: ignore them.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True, validate_default=True)

    sudo: StrictBool = _f(True, "Run every operation through sudo (pyinfra's `_sudo`).", alias="_sudo")
    config_root: AbsPath = _f("/opt/watchme", "Where the deploy renders every file it owns.")
    config_root_owner: Account = _f("root", "Owner of config_root.")
    config_root_group: Account = _f("root", "Group of config_root.")
    config_root_mode: Mode = _f("755", "Mode of config_root.")
    bootstrap_packages: list[Package] = _f(["nginx", "docker.io", "curl"], "Packages the bootstrap installs.")
    compose_candidates: list[Package] = _f(
        ["docker-compose-v2", "docker-compose-plugin", "docker-compose"],
        "Compose packages in order of preference.", min_length=1)
    supported_distros: list[Annotated[StrictStr, pattern(r"[a-z0-9._-]+", "use an os-release ID")]] = _f(
        ["debian", "ubuntu"], "Distributions the bootstrap knows.", min_length=1)
    swap_file: AbsPath = _f("/swapfile", "Swap file path.")
    swap_size_mib: StrictInt = _f(2048, "Swap file size in MiB.", ge=64, le=65536)
    server_name: HostName = _f("api.hey-watch.me", "Public name nginx answers to (server_name).")
    nginx_backups_keep: StrictInt = _f(10, "Timestamped backups of the Nginx site to keep.", ge=1, le=1000)
    http_only: StrictBool = _f(False, "Serve the site on port 80 only, without TLS.")
    tls_certificate: AbsPath = _f("/etc/letsencrypt/live/api.hey-watch.me/fullchain.pem",
                                  "Certificate chain nginx serves on 443.")
    tls_certificate_key: AbsPath = _f("/etc/letsencrypt/live/api.hey-watch.me/privkey.pem",
                                      "Private key of tls_certificate.")
    tls_self_signed: StrictBool = _f(False, "Make a self-signed certificate when none exists (test hosts).")
    allow_route_removal: StrictBool = _f(False, "Let a deploy remove live locations the registry lacks.")
    allow_older: StrictBool = _f(False, "Let a deploy from a commit older than the last deployed one run.")
    lock_wait_seconds: StrictInt = _f(0, "Seconds to wait for another deploy's lock (0: fail at once).",
                                      ge=0, le=3600)
    network_name: Annotated[StrictStr, pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", "use a Docker network name")] = \
        _f("watchme-network", "The shared Docker network every service joins.")
    network_driver: Annotated[StrictStr, pattern(r"bridge|overlay", "use bridge (one host) or overlay "
                                                 "(several hosts, Docker Swarm)")] = \
        _f("bridge", "The network's driver.")
    network_scope: Annotated[StrictStr, pattern(r"single|swarm", "use single (one host's bridge) or "
                                                "swarm (an attachable overlay across hosts)")] = \
        _f("single", "single: a bridge on one host; swarm: an overlay (also with several hosts).")
    network_ip_range: Subnet | None = _f(None, "Where Docker picks dynamic addresses (a container "
                                         "without a fixed IP, an overlay's anchors); registry IPs stay "
                                         "outside; None: the subnet's last /24.")
    network_encrypted: StrictBool = _f(False, "Overlay only: IPsec-encrypt the data plane (--opt encrypted).")
    private_address: IPv4 | None = _f(None, "This host's private address (default: read from the host).")
    network_subnet: Subnet = _f("172.27.0.0/16", "The network's subnet; registry IPs are inside it.")
    network_gateway: IPv4 = _f("172.27.0.1", "The network's gateway (never a container's IP).")
    network_repair: StrictBool = _f(False, "Recreate a drifted network, reconnecting its containers.")
    compose_migrate: StrictBool = _f(False, "Rewrite compose files that create the network (backup first).")
    compose_pull: StrictBool = _f(True, "Pull images before each service starts.")
    ecr_registry: Annotated[StrictStr, pattern(r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com",
                                               "use <account>.dkr.ecr.<region>.amazonaws.com")] = \
        _f("754724220380.dkr.ecr.ap-southeast-2.amazonaws.com", "The ECR registry the images come from.")
    ecr_region: Annotated[StrictStr, pattern(r"[a-z]{2}(-[a-z]+)+-\d", "use an AWS region like ap-southeast-2")] = \
        _f("ap-southeast-2", "The region of ecr_registry.")
    infra_unit: UnitName = _f("watchme-infrastructure.service", "The unit that owns the network.")
    host_memory_mib: StrictInt = _f(1900, "Nominal usable memory of the host (MiB), for the registry's check.",
                                    ge=256)
    memory_os_reserve_mib: StrictInt = _f(300, "MiB kept free for the OS, Docker and Nginx.", ge=0)
    memory_warn_share: StrictFloat = _f(0.8, "Share of memory above which the budget warns.", gt=0, le=1)
    guard_interval: TimeSpan = _f("5min", "How often the guard runs (a systemd time span).")
    monitor_fix: StrictBool = _f(True, "Let the guard and the deploy reconnect detached containers.")
    disk_prune_threshold: StrictInt = _f(85, "Prune Docker at this % of disk use.", ge=1, le=100)
    prune_all_images: StrictBool = _f(False, "Prune all unused images, not only dangling ones.")
    prune_volumes: StrictBool = _f(False, "Also prune unused volumes (deletes data).")

    @property
    def dynamic_range(self) -> ipaddress.IPv4Network:
        """Where the network's dynamic addresses come from (registry IPs stay outside)."""
        return self.network_ip_range or default_range(self.network_subnet)

    def problems(self) -> list[tuple[str, str]]:
        """Checks across keys; (key, message) pairs."""
        out = []
        net, gw = self.network_subnet, self.network_gateway
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            out.append(("network_gateway", f"{gw} is not a usable address of network_subnet {net}; "
                                           f"use e.g. {next(net.hosts(), net.network_address)}"))
        if not self.dynamic_range.subnet_of(net) or self.dynamic_range == net:
            out.append(("network_ip_range", f"{self.dynamic_range} is not a part of network_subnet {net}; "
                                            f"use e.g. {default_range(net)} or None"))
        if self.memory_os_reserve_mib >= self.host_memory_mib:
            out.append(("memory_os_reserve_mib", f"{self.memory_os_reserve_mib} MiB leaves nothing of "
                                                 f"host_memory_mib {self.host_memory_mib}; lower it"))
        if self.tls_certificate == self.tls_certificate_key:
            out.append(("tls_certificate_key", "is the certificate itself; give the private key file"))
        return out


def default_range(net: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    """The last /24 of the subnet (its last quarter when it is smaller than a /23)."""
    prefix = 24 if net.prefixlen <= 23 else min(net.prefixlen + 2, 30)
    return list(net.subnets(new_prefix=prefix))[-1]


def keys() -> list[str]:
    """The keys of group_data/all.py that Settings covers, as written there."""
    return [f.alias or name for name, f in Settings.model_fields.items()]


def _describe(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "settings"
    if err["type"] == "missing":
        return f"settings.{key}: required; set it in group_data/all.py"
    msg = err["msg"].removeprefix("Value error, ")
    return (f"settings.{key}: {msg} (got {err.get('input')!r}); fix it in group_data/ "
            f"or with --data {err['loc'][0]}=...")


def validate(data: Any) -> Settings:
    """The Settings of data (a dict, or pyinfra's host.data): missing keys take their defaults.

    If data also holds a loaded `registry`, its checks that depend on settings (IPs in the
    subnet, the memory budget, unit names) run against these values. Raises SettingsError
    (settings problems) or the registry's RegistryError, listing every problem."""
    get = data.get
    values = {k: get(k) for k in keys() if get(k) is not None}
    try:
        settings = Settings.model_validate(values)
    except ValidationError as e:
        raise SettingsError([_describe(err) for err in e.errors()]) from None
    problems = [f"settings.{k}: {msg}" for k, msg in settings.problems()]
    if problems:
        raise SettingsError(problems)
    registry = get("registry")
    if registry is not None and hasattr(registry, "check"):
        registry.check(settings)
    return settings


def cli_data(argv: list[str]) -> dict[str, Any]:
    """The `--data key=value` pairs of a pyinfra command line, parsed as pyinfra parses them.

    group_data is read before pyinfra applies its overrides, so all.py reads them itself to
    check the values the run will really use before it connects."""
    out: dict[str, Any] = {}
    it = iter(argv)
    for arg in it:
        pair = next(it, "") if arg == "--data" else arg[7:] if arg.startswith("--data=") else None
        if pair is None:
            continue
        key, sep, value = pair.partition("=")
        if sep and key:
            from pyinfra_cli.util import parse_cli_arg
            out[key] = parse_cli_arg(value)
    return out


def require(host: Any) -> Settings:
    """First thing in the deploy: the effective settings of this host, or a DeployError that
    lists every problem before any operation."""
    from pyinfra.api.exceptions import DeployError

    try:
        return validate(host.data)
    except ConfigError as e:
        raise DeployError(f"{host.name}: invalid settings:\n{e}") from None
