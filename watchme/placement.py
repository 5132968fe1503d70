"""Which host runs which service (issue 14), and how the hosts reach each other.

The inventory's first host is the front (public Nginx, swarm manager); every registry service
names its host with `host:` (an inventory host name, default the front). Each task asks
services_here(host) instead of the whole registry, so units, overrides, the memory budget and
the guard's members are per host. A host's private address (swarm advertise address, Nginx
upstream, firewall source) is the inventory's (`private_address` host data, from
WATCHME_PRIVATE_ADDRESSES) or read from the host: the source address of its default route.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pyinfra.api import FactBase

ANCHOR = "watchme-network-anchor"  # the container that makes the overlay visible to compose
ANCHOR_IMAGE = "watchme-network-anchor:busybox"


class PlacementError(Exception):
    """A registry `host:` naming no inventory host; the message names the field and the hosts."""


def placement_name(h: Any) -> str:
    return h.data.get("placement_name") or h.name


def hosts(inventory: Any) -> list[Any]:
    """Every host of the inventory, front first."""
    all_hosts = list(inventory)
    return sorted(all_hosts, key=lambda h: not h.data.get("front", False))


def front(inventory: Any) -> Any:
    return hosts(inventory)[0]


def is_front(h: Any) -> bool:
    return bool(h.data.get("front", False))


def swarm(h: Any, inventory: Any) -> bool:
    """watchme-network spans hosts: more than one host, or network_scope=swarm asked for."""
    return h.data.get("network_scope", "single") == "swarm" or len(list(inventory)) > 1


def network_driver(h: Any, inventory: Any) -> str:
    return "overlay" if swarm(h, inventory) else h.data.network_driver


def service_host(service: Any, front_name: str) -> str:
    return service.host or front_name


def services_on(registry: Any, name: str, front_name: str) -> list:
    """The enabled services placed on the host called name."""
    return [s for s in registry.enabled_services if service_host(s, front_name) == name]


def services_here(h: Any, inventory: Any) -> list:
    """The enabled services this host runs (every task's list, instead of the registry's)."""
    return services_on(h.data.registry, placement_name(h), placement_name(front(inventory)))


def unknown_hosts(entries: Any, names: list[str]) -> list[str]:
    """Problems for raw registry entries whose `host:` names no inventory host."""
    out = []
    if not isinstance(entries, dict) or not isinstance(entries.get("services"), list):
        return out
    for i, e in enumerate(entries["services"]):
        if not isinstance(e, dict) or e.get("host") is None or e.get("host") in names:
            continue
        label = e.get("name") if isinstance(e.get("name"), str) else f"#{i + 1}"
        out.append(f"services[{label}].host: {str(e['host'])!r} is not an inventory host; "
                   f"known hosts: {', '.join(names)} (WATCHME_HOSTS names them name=user@addr)")
    return out


def parse_private_addresses(spec: str, names: list[str]) -> dict[str, str]:
    """WATCHME_PRIVATE_ADDRESSES=name=addr,... into {name: addr}; PlacementError when bad."""
    out = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, sep, addr = item.partition("=")
        if not sep or name not in names:
            raise PlacementError(f"WATCHME_PRIVATE_ADDRESSES: {item!r} is not name=address of an "
                                 f"inventory host ({', '.join(names)}); fix: e.g. "
                                 f"{names[0]}=10.0.1.10")
        try:
            ipaddress.IPv4Address(addr)
        except ValueError:
            raise PlacementError(f"WATCHME_PRIVATE_ADDRESSES: {addr!r} ({name}) is not an IPv4 "
                                 "address; fix: the host's private address, e.g. 10.0.1.10") from None
        out[name] = addr
    return out


class DefaultRouteAddress(FactBase):
    """The host's own address on its default route (the interface a VPC's private address is
    on), as the kernel picks it: a UDP socket 'connected' to a documentation address sends
    nothing. None when the host has no default route."""

    def command(self) -> str:
        return ("python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "s.connect((\"192.0.2.1\", 9)); print(s.getsockname()[0])' 2>/dev/null || true")

    def process(self, output):
        text = "\n".join(output).strip()
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            return None


def private_address(h: Any) -> str | None:
    """The inventory's private_address, else the one read from the host."""
    return h.data.get("private_address") or h.get_fact(DefaultRouteAddress, _sudo=False)


def check_inventory(inventory_hosts: list[tuple[str, dict]], env: dict) -> None:
    """Before any connection: every `host:` of the registry names an inventory host, and
    WATCHME_PRIVATE_ADDRESSES (host data private_address) names them too. PlacementError."""
    import yaml

    from watchme.registry import registry_path

    names = [data.get("placement_name", name) for name, data in inventory_hosts]
    if not names:
        return
    addresses = parse_private_addresses(env.get("WATCHME_PRIVATE_ADDRESSES", ""), names)
    for name, data in inventory_hosts:
        if data.get("placement_name", name) in addresses:
            data["private_address"] = addresses[data.get("placement_name", name)]
    try:
        entries = yaml.safe_load(registry_path().read_text())
    except (OSError, yaml.YAMLError):
        return  # group_data/all.py reports an unreadable registry with its own message
    problems = unknown_hosts(entries, names)
    if problems:
        raise PlacementError("\n".join(problems))


def routed(registry: Any, inventory: Any, address_of) -> list:
    """Every enabled service as the front's Nginx reaches it: a service placed on another host
    (with the default upstream_host localhost) goes to that host's private address; one that
    sets upstream_host keeps it. address_of(host) gives a host's private address."""
    by_name = {placement_name(h): h for h in hosts(inventory)}
    front_name = placement_name(front(inventory))
    out = []
    for s in registry.enabled_services:
        where = service_host(s, front_name)
        if where != front_name and s.upstream_host == "localhost":
            address = address_of(by_name[where])
            if not address:
                raise PlacementError(f"{where}: no private address for the route to {s.name} (no "
                                     f"default route); fix: WATCHME_PRIVATE_ADDRESSES={where}=ADDR")
            s = s.model_copy(update={"upstream_host": address})
        out.append(s)
    return out


def elsewhere(registry: Any, inventory: Any) -> dict[str, list]:
    """{host name: its services} for the hosts other than the front that run services."""
    front_name = placement_name(front(inventory))
    out: dict[str, list] = {}
    for s in registry.enabled_services:
        where = service_host(s, front_name)
        if where != front_name:
            out.setdefault(where, []).append(s)
    return out
