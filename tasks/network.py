"""watchme-network (seed: "ネットワークインフラストラクチャ管理") and the compose audit.

The network is checked before any change: a drifted one stops the deploy with the diff
(unless network_repair), since every service's fixed IP depends on its subnet. One made
without the range for dynamic addresses (the production network, created by hand) works,
so it is only reported, with the fix for a maintenance window. Then each
compose file on the host is audited for the seed's migration bug (`driver: bridge` instead
of `external: true`) and, with compose_migrate, fixed in place after a backup.
"""

from __future__ import annotations

import ipaddress
from io import StringIO

from pyinfra import host, inventory, logger
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, server

from tasks import guard, swarm
from watchme import backup, placement
from watchme.network import (ComposeFiles, audit_compose, docker_network, migrate_compose,
                             network_fact, script_path)
from watchme.placement import services_here
from watchme.settings import default_range


def check() -> None:
    """Before any change: refuse a drifted network unless repair is asked for. On a new host
    the check script is not installed yet: the host-side --ensure decides then."""
    d = host.data
    w = wanted()
    found = network_fact(script_path(), d.network_name, w["driver"], d.network_subnet,
                         d.network_gateway, w["anchor"], w["ip_range"])
    if found is None:
        return
    if found["journal"]:
        logger.warning(f"{host.print_prefix}network: finishing the interrupted repair of "
                       f"{d.network_name} (journal from {found['journal'].get('started')})")
    elif found["drift"] and not d.network_repair:
        raise DeployError(f"{host.name}: " + found["report"])
    elif found["drift"] or (found["outdated"] and d.network_repair):
        logger.warning(f"{host.print_prefix}network_repair: recreating {d.network_name} and "
                       f"reconnecting {len(found['containers'])} container(s)")
    elif found["outdated"]:
        logger.warning(f"{host.print_prefix}network: " + found["report"])


def wanted() -> dict:
    """The network this host wants: a bridge on one host; an attachable overlay (with the
    anchor container on every host) when it spans hosts (watchme/placement.py). Both keep
    Docker's dynamic addresses in ip_range, outside every registry IP."""
    d = host.data
    overlay = placement.swarm(host, inventory)
    return {"driver": placement.network_driver(host, inventory),
            "anchor": placement.ANCHOR_IMAGE if overlay else "",
            "ip_range": str(d.get("network_ip_range") or default_range(
                ipaddress.IPv4Network(d.network_subnet))),
            "encrypted": bool(d.get("network_encrypted", False)) and overlay}


def apply() -> dict:
    """The host scripts, the swarm (several hosts), the network, then the compose audit;
    returns {service name: migrate op} so units can restart a migrated service."""
    check()
    guard.install_scripts()  # the network operation and the infrastructure unit run them
    swarm.apply()
    d = host.data
    w = wanted()
    args = dict(network=d.network_name, driver=w["driver"], subnet=d.network_subnet,
                gateway=d.network_gateway, repair=d.network_repair,
                fixed_ips={s.container: str(s.ip) for s in services_here(host, inventory) if s.ip},
                anchor=w["anchor"], ip_range=w["ip_range"], encrypted=w["encrypted"])
    what = f"{d.network_name} ({w['driver']} {d.network_subnet} gateway {d.network_gateway})"
    # Two call sites, so pyinfra orders them: the manager creates the overlay on the front
    # before any worker's anchor attaches to it.
    if placement.is_front(host) or not w["anchor"]:
        docker_network(name=f"Docker network {what}", **args)
    else:
        docker_network(name=f"Docker network {what}: attach on this worker", **args)
    return audit()


def audit() -> dict:
    d = host.data
    services = services_here(host, inventory)
    found = host.get_fact(ComposeFiles, paths=[s.compose_file for s in services])
    migrated = {}
    for s in services:
        f = found.get(s.compose_file)
        if f is None:
            continue
        problems = audit_compose(f["text"], d.network_name, d.network_subnet)
        if not problems:
            continue
        report = "; ".join(p for _, p in problems)
        if not d.compose_migrate:
            logger.warning(f"{host.print_prefix}compose audit: {s.compose_file} ({s.name}): {report}; "
                           "fix: rerun with --data compose_migrate=true (backup first)")
            continue
        try:
            text = migrate_compose(f["text"], sorted({k for k, _ in problems if k}))
        except (ValueError, KeyError) as e:
            logger.warning(f"{host.print_prefix}compose audit: {s.compose_file} ({s.name}): {report}; "
                           f"not migrated: {e}")
            continue
        server.shell(name=f"Back up {s.compose_file} before migrating it",
                     commands=[backup.copy_command(s.compose_file)])
        migrated[s.name] = files.put(
            name=f"Migrate {s.compose_file} to external {d.network_name}",
            src=StringIO(text), dest=s.compose_file, user=f["user"], group=f["group"],
            mode=f["mode"])
    return migrated
