"""systemd units from the registry (seed, section 3 "② systemdサービスファイルの作成").

Each unit is rendered into {config_root}/systemd and linked into /etc/systemd/system, the
seed's layout. Every service unit requires watchme-infrastructure.service, which owns the
network, so a restart of it brings its dependants back in order. A service that leaves the
registry (or is disabled there) is stopped, disabled and unlinked.
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api.exceptions import DeployError
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from watchme.network import ComposeFiles, create_command, unit_check_pattern
from watchme.units import UnitFiles, VendorUnits, ours, unit_link

SYSTEM_DIR = "/etc/systemd/system"


def _escape(value: str) -> str:
    """systemd expands %-specifiers in unit settings; a literal % is %%."""
    return value.replace("%", "%%")


def apply(migrated: dict[str, OperationMeta] | None = None) -> None:
    d = host.data
    unit_dir = f"{d.config_root}/systemd"
    infra = d.infra_unit
    services = d.registry.enabled_services
    wanted = {infra, *(f"{s.name}.service" for s in services)}
    # A link in /etc/systemd/system would silently replace the OS's own unit of that name.
    clash = sorted(wanted & host.get_fact(VendorUnits))
    if clash:
        raise DeployError(f"{host.name}: " + "; ".join(
            f"services[{u.removesuffix('.service')}].name: {u} is a unit the OS ships "
            "(/lib/systemd/system); rename the service" for u in clash))
    stale = [n for n in ours(host.get_fact(UnitFiles, directory=SYSTEM_DIR), unit_dir)
             if n not in wanted]
    compose = host.get_fact(ComposeFiles, paths=[s.compose_file for s in services])

    changes = []
    for unit in stale:
        changes.append(systemd.service(name=f"Stop and disable removed service {unit}",
                                       service=unit, running=False, enabled=False))
        changes.append(files.link(name=f"Unlink removed unit {SYSTEM_DIR}/{unit}",
                                  path=f"{SYSTEM_DIR}/{unit}", present=False))
        changes.append(files.file(name=f"Remove unit file {unit_dir}/{unit}",
                                  path=f"{unit_dir}/{unit}", present=False))

    files.directory(name=f"Unit directory {unit_dir}", path=unit_dir, user="root",
                    group="root", mode="755")
    rendered = {}
    infra_tpl = files.template(
        name=f"Unit {infra}", src="templates/watchme-infrastructure.service.j2",
        dest=f"{unit_dir}/{infra}", mode="644", network=d.network_name,
        driver=d.network_driver, subnet=d.network_subnet, gateway=d.network_gateway,
        create=create_command(d.network_name, d.network_driver, d.network_subnet,
                              d.network_gateway),
        accepted=unit_check_pattern(d.network_driver, d.network_subnet, d.network_gateway))
    changes.append(infra_tpl)
    for s in services:
        rendered[s.name] = files.template(
            name=f"Unit {s.name}.service", src="templates/service.unit.j2",
            dest=f"{unit_dir}/{s.name}.service", mode="644", service=s.name,
            description=_escape(s.description), compose=d.compose_command,
            compose_file=_escape(s.compose_file), infra_unit=infra, pull=d.compose_pull)
        changes.append(rendered[s.name])
    for unit in sorted(wanted):
        changes.append(unit_link(name=f"Link unit {SYSTEM_DIR}/{unit}",
                                 path=f"{SYSTEM_DIR}/{unit}", target=f"{unit_dir}/{unit}"))
    systemd.daemon_reload(name="Reload systemd (a unit changed)", _if=any_changed(*changes))

    systemd.service(name=f"Enable and start {infra}", service=infra, running=True, enabled=True)
    for s in services:
        exists = compose.get(s.compose_file) is not None
        if s.start and not exists:
            logger.warning(f"{host.print_prefix}{s.name}.service: enabled, not started: "
                           f"{s.compose_file} is not on the host yet")
        start = s.start and exists
        changed = rendered[s.name].will_change or (
            s.name in (migrated or {}) and migrated[s.name].will_change)
        systemd.service(
            name=f"Enable {s.name}.service" + (" and start it" if start else ""),
            service=f"{s.name}.service", enabled=True, running=True if start else None,
            # A running service picks up a changed unit or compose file only on restart.
            restarted=bool(changed and start))
