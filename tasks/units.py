"""systemd units from the registry (seed, section 3 "② systemdサービスファイルの作成").

Each unit is rendered into {config_root}/systemd (`render()`: written by the one bundle,
watchme/bundle.py) and linked into /etc/systemd/system, the seed's layout; all links in one
command, all units enabled, started and restarted in one (issue 13). Every service unit
requires watchme-infrastructure.service, which owns the network, so a restart of it brings
its dependants back in order. A service that leaves the
registry (or is disabled there) is stopped, disabled and unlinked: only links into our own
unit directory, never a unit linked into the operator's git clone.

Adopting a running service restarts nothing: what was at /etc/systemd/system/<unit> is kept
(resolved, watchme/adopt.py), our link replaces it, systemd reloads, and an active unit keeps
running. A unit whose file changed but was never loaded (a run killed before daemon-reload:
systemd's NeedDaemonReload) is reloaded and restarted by the next run; so is a running
service whose container's memory limit or fixed IP is not its override's (a run killed
between writing the override and the restart).
"""

from __future__ import annotations

from pyinfra import host, inventory, logger
from pyinfra.api.exceptions import DeployError
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, systemd

from tasks import firewall, network
from watchme import bundle
from watchme.adopt import LinkStates, adopt_links, adopting
from watchme.images import override_path
from watchme.network import ComposeFiles, create_command
from watchme.placement import services_here
from watchme.units import loaded as units_loaded
from watchme.units import (RunningContainers, UnitFiles, VendorUnits, WantsLinks,
                           drifted, ours, stale_wants, unit_name, units_enabled)

SYSTEM_DIR = "/etc/systemd/system"


def _escape(value: str) -> str:
    """systemd expands %-specifiers in unit settings; a literal % is %%."""
    return value.replace("%", "%%")


def _owner(unit_of: dict[str, str], unit: str) -> str:
    return next((n for n, u in unit_of.items() if u == unit), unit.removesuffix(".service"))


def render() -> None:
    """Register the unit directory and every unit file in the bundle (watchme/bundle.py)."""
    d = host.data
    unit_dir = f"{d.config_root}/systemd"
    # The operator's git clone keeps its owner while config_root is still the clone.
    if _in_clone(unit_dir):
        bundle.directory(unit_dir)
    else:
        bundle.directory(unit_dir, mode="755", user="root", group="root")
    w = network.wanted()
    bundle.add(f"{unit_dir}/{d.infra_unit}", bundle.render(
        "templates/watchme-infrastructure.service.j2", network=d.network_name,
        driver=w["driver"], subnet=d.network_subnet, gateway=d.network_gateway,
        create=create_command(d.network_name, w["driver"], d.network_subnet,
                              d.network_gateway, w["anchor"], w["ip_range"], w["encrypted"]),
        firewall=firewall.restore_commands()))
    for s in services_here(host, inventory):
        bundle.add(f"{unit_dir}/{unit_name(s)}", bundle.render(
            "templates/service.unit.j2", service=s.name,
            description=_escape(s.description), compose=d.compose_command,
            compose_file=_escape(s.compose_file), infra_unit=d.infra_unit, pull=d.compose_pull,
            override_file=_escape(override_path(d.config_root, s.name))))


def _in_clone(unit_dir: str) -> bool:
    """Whether config_root is still the operator's git clone (the old default): never written
    there beyond our files, a removed unit is only unlinked."""
    clone = host.data.get("operator_clone", "/home/ubuntu/watchme-server-configs").rstrip("/")
    return unit_dir == clone or unit_dir.startswith(clone + "/")


def apply(migrated: dict[str, OperationMeta] | None = None,
          overridden: dict[str, str] | None = None) -> None:
    """migrated: {service name: op} from the compose audit; overridden: {service name: its
    override file} (tasks/overrides.py); a running service restarts when either changed."""
    d = host.data
    unit_dir = f"{d.config_root}/systemd"
    infra = d.infra_unit
    services = services_here(host, inventory)
    unit_of = {s.name: unit_name(s) for s in services}
    wanted = {infra, *unit_of.values()}
    # A link in /etc/systemd/system would silently replace the OS's own unit of that name.
    clash = sorted(wanted & host.get_fact(VendorUnits))
    if clash:
        raise DeployError(f"{host.name}: " + "; ".join(
            f"services[{_owner(unit_of, u)}].unit: {u} is a unit the OS ships "
            "(/lib/systemd/system); rename the service or its unit" for u in clash))
    stale = [n for n in ours(host.get_fact(UnitFiles, directory=SYSTEM_DIR), unit_dir)
             if n not in wanted]
    loaded = units_loaded(sorted(wanted))
    never_loaded = sorted(u for u in wanted if loaded.get(u, {}).get("need_reload"))
    compose = host.get_fact(ComposeFiles, paths=[s.compose_file for s in services])
    containers = host.get_fact(RunningContainers, containers=[s.container for s in services]) \
        if services else {}

    in_clone = _in_clone(unit_dir)
    # A run killed after unlinking a removed unit left its file in our unit directory: no link
    # names it any more, so the file itself says it is left over.
    leftover = [] if in_clone else [
        n for n in host.get_fact(UnitFiles, directory=unit_dir) or {}  # None: no directory yet
        if n not in wanted and n not in stale]
    changes = []
    for unit in stale:
        changes.append(systemd.service(name=f"Stop and disable removed service {unit}",
                                       service=unit, running=False, enabled=False))
        changes.append(files.link(name=f"Unlink removed unit {SYSTEM_DIR}/{unit}",
                                  path=f"{SYSTEM_DIR}/{unit}", present=False))
    for unit in ([] if in_clone else [*stale, *leftover]):
        changes.append(files.file(name=f"Remove unit file {unit_dir}/{unit}",
                                  path=f"{unit_dir}/{unit}", present=False))

    rewritten = {u for u in wanted if bundle.changed(f"{unit_dir}/{u}")}
    # A hand-made unit or a link into the clone is kept (resolved) beside it, then replaced.
    links = {f"{SYSTEM_DIR}/{u}": f"{unit_dir}/{u}" for u in sorted(wanted)}
    adopted = {p.rsplit("/", 1)[1] for p in
               adopting(host.get_fact(LinkStates, paths=sorted(links)), links)}
    changes.append(adopt_links(name=f"Link the units into {SYSTEM_DIR}", links=links))
    # Enablement links made by the operator's `systemctl enable` point into their clone:
    # point them at our unit file, as `systemctl enable` would now (enablement unchanged).
    for path, target in stale_wants(host.get_fact(WantsLinks), wanted, unit_dir).items():
        changes.append(files.link(name=f"Point {path} at {target}", path=path, target=target,
                                  force=True, force_backup=False))
    if never_loaded:
        logger.warning(f"{host.print_prefix}systemd has not loaded the file of "
                       f"{', '.join(never_loaded)} (an interrupted run): reloading and restarting")
        systemd.daemon_reload(name="Reload systemd (a unit file was never loaded)")
    else:
        systemd.daemon_reload(name="Reload systemd (a unit changed)",
                              _if=lambda: bool(rewritten) or any(c.did_change() for c in changes))

    start, restart = [infra], []
    for s in services:
        exists = compose.get(s.compose_file) is not None
        unit = unit_of[s.name]
        if s.start and not exists:
            logger.warning(f"{host.print_prefix}{unit}: enabled, not started: "
                           f"{s.compose_file} is not on the host yet")
        if not (s.start and exists):
            continue
        start.append(unit)
        changed = unit in rewritten or unit in never_loaded or (
            s.name in (migrated or {}) and migrated[s.name].will_change) or (
            s.name in (overridden or {}) and (bundle.changed(overridden[s.name]) or drifted(
                s, containers.get(s.container), d.network_name,
                override_path(d.config_root, s.name))))
        # Adopted now: the service runs as the operator started it; no restart (an inactive
        # one is started).
        adopting_now = unit in adopted and unit not in never_loaded
        if changed and not adopting_now:
            # A running service picks up a changed unit or compose file only on restart.
            restart.append(unit)
    units_enabled(name=f"Enable and start {infra} and the services",
                  enable=[infra, *unit_of.values()], start=start, restart=restart)
