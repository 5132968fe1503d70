"""`watchme routes` / `watchme explain`: every public route, or where one request goes.

    watchme routes [--registry PATH]
    watchme explain URL_OR_PATH [--registry PATH]

The registry is --registry, else WATCHME_REGISTRY, else group_data/services.yaml (the same
rule as the deploy and doctor: watchme.registry.registry_path). nginx's URI rules live in
watchme/uri.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit

from watchme.registry import Registry, RegistryError, load
from watchme.uri import match, normalize, upstream_uri

__all__ = ["main", "match", "normalize", "upstream_uri"]


def _request_uri(arg: str) -> str:
    """'https://host/p?q' or '/p?q' -> '/p?q'."""
    if "://" not in arg:
        return arg
    parts = urlsplit(arg)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def placed(registry: Registry, env=None) -> tuple[Registry, dict[str, str]]:
    """The registry as the front's Nginx routes it (issue 14): a service on another host goes
    to that host's private address (WATCHME_PRIVATE_ADDRESSES; else a placeholder, since only
    the deploy reads it from the host), and {service: host} (WATCHME_HOSTS names them)."""
    from watchme.placement import PlacementError, parse_private_addresses
    from watchme.targets import TargetError, parse_hosts

    env = os.environ if env is None else env
    try:
        names = [d["placement_name"] for _, d in parse_hosts(env.get("WATCHME_HOSTS", ""), "ubuntu", env)] \
            if env.get("WATCHME_HOSTS", "").strip() else []
        addresses = parse_private_addresses(env.get("WATCHME_PRIVATE_ADDRESSES", ""), names)
    except (TargetError, PlacementError):
        names, addresses = [], {}
    front = names[0] if names else "front"
    services, where = [], {}
    for s in registry.services:
        where[s.name] = s.host or front
        if s.host and s.host != front and s.upstream_host == "localhost":
            s = s.model_copy(update={"upstream_host": addresses.get(s.host, f"<{s.host}.private_address>")})
        services.append(s)
    return Registry.model_construct(services=services), where


def _list(registry: Registry) -> int:
    registry, where = placed(registry)
    rows = [("NAME", "HOST", "PUBLIC PATH", "PROXY_PASS", "EXAMPLE REQUEST", "GOES UPSTREAM AS")]
    for s in registry.enabled_services:
        example = s.public_path.rstrip("/") + "/example"
        up = upstream_uri(s.public_path, s.upstream_url, example)
        rows.append((s.name, where[s.name], s.public_path, s.upstream_url, example, s.upstream_base + up))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _explain(registry: Registry, arg: str) -> int:
    registry, where = placed(registry)
    request = _request_uri(arg)
    try:
        service = match(registry, request)
    except ValueError as e:
        print(f"explain: {e}: nginx would answer 400 Bad Request", file=sys.stderr)
        return 1
    if service is None:
        # A prefix location ending in '/' with proxy_pass redirects the bare prefix (301).
        norm = normalize(request.partition("?")[0])
        target = next((s for s in registry.enabled_services if s.public_path == norm + "/"), None)
        if target is not None:
            print(f"{request}: nginx answers 301 redirect to {target.public_path} "
                  f"(service {target.name}); request {target.public_path} instead")
            return 0
        paths = ", ".join(s.public_path for s in registry.enabled_services)
        print(f"explain: no location matches {request}: nginx would answer 404 "
              f"(public paths: {paths})", file=sys.stderr)
        return 1
    up = upstream_uri(service.public_path, service.upstream_url, request)
    print(f"request:    {request}")
    print(f"service:    {service.name} ({service.container}) - {service.description}")
    print(f"runs on:    {where[service.name]}")
    print(f"location:   {service.public_path}")
    print(f"proxy_pass: {service.upstream_url}")
    print(f"upstream:   {service.upstream_base}{up}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="watchme", description=__doc__.split("\n")[0])
    parser.add_argument("--registry", metavar="PATH",
                        help="services.yaml (default: $WATCHME_REGISTRY, else group_data/services.yaml)")
    # SUPPRESS: a subcommand without --registry keeps the value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", metavar="PATH", default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", parents=[common], help="every public path and where it goes")
    ex = sub.add_parser("explain", parents=[common], help="where one request goes")
    ex.add_argument("url", help="https://api.hey-watch.me/scheduler/status/whisper or a path")
    args = parser.parse_args(argv)
    try:
        registry = load(args.registry)
    except RegistryError as e:
        print(f"registry error:\n{e}", file=sys.stderr)
        return 2
    if args.command == "list":
        return _list(registry)
    return _explain(registry, args.url)


if __name__ == "__main__":
    sys.exit(main())
