"""What nginx does with a request: which location takes it and what URI goes upstream.

Every location in the registry is a prefix location with `proxy_pass http://host:port/uri`.
nginx's rule (ngx_http_proxy_module, proxy_pass): "If proxy_pass is specified with a URI,
then when a request is passed to the server, the part of a normalized request URI matching
the location is replaced by a URI specified in the directive." Without a URI the request
URI goes upstream "in the same form as sent by a client". The query string passes through.

    python -m watchme.routes list [--registry PATH]
    python -m watchme.routes explain URL_OR_PATH [--registry PATH]
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # registry imports this module for upstream_uri; avoid the cycle
    from watchme.registry import Registry, Service


def normalize(path: str) -> str:
    """The path as nginx sees it for location matching: slashes merged, . and .. resolved.

    Percent-escapes are left as they are; nginx decodes and re-escapes them, which gives the
    same result for ordinary paths (not for an escaped slash, %2F).
    """
    if not path.startswith("/"):
        raise ValueError(f"{path!r} does not start with '/'")
    parts: list[str] = []
    for seg in path.split("/")[1:]:
        if seg == "..":
            if not parts:  # nginx answers 400 Bad Request
                raise ValueError(f"{path!r} climbs above the root with '..'")
            parts.pop()
        elif seg not in ("", "."):
            parts.append(seg)
    result = "/" + "/".join(parts)
    last = path.rsplit("/", 1)[-1]
    if parts and (path.endswith("/") or last in (".", "..")):
        result += "/"
    return result


def _uri_of(proxy_pass: str) -> str:
    """The URI part of a proxy_pass target: '' for http://host:port, '/x/' for .../x/."""
    scheme, sep, rest = proxy_pass.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"proxy_pass {proxy_pass!r} is not http:// or https://")
    slash = rest.find("/")
    return "" if slash < 0 else rest[slash:]


def upstream_uri(location: str, proxy_pass: str, request_uri: str) -> str:
    """The URI (path and query) nginx sends upstream for request_uri in this location."""
    path, _, query = request_uri.partition("?")
    norm = normalize(path)
    if not norm.startswith(location):
        raise ValueError(f"{request_uri!r} does not match location {location!r}")
    uri = _uri_of(proxy_pass)
    if not uri:
        return request_uri  # passed unchanged, not even normalized
    return uri + norm[len(location):] + (f"?{query}" if query else "")


def match(registry: Registry, path: str) -> Service | None:
    """The enabled service whose public_path is the longest prefix of path (nginx's choice
    among prefix locations), or None: nginx would answer 404."""
    norm = normalize(path.partition("?")[0])
    found = [s for s in registry.enabled_services if norm.startswith(s.public_path)]
    return max(found, key=lambda s: len(s.public_path), default=None)


def _request_uri(arg: str) -> str:
    """'https://host/p?q' or '/p?q' -> '/p?q'."""
    if "://" not in arg:
        return arg
    parts = urlsplit(arg)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _list(registry: Registry) -> int:
    rows = [("NAME", "PUBLIC PATH", "PROXY_PASS", "EXAMPLE REQUEST", "GOES UPSTREAM AS")]
    for s in registry.enabled_services:
        example = s.public_path.rstrip("/") + "/example"
        up = upstream_uri(s.public_path, s.upstream_url, example)
        rows.append((s.name, s.public_path, s.upstream_url, example, s.upstream_base + up))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _explain(registry: Registry, arg: str) -> int:
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
    print(f"location:   {service.public_path}")
    print(f"proxy_pass: {service.upstream_url}")
    print(f"upstream:   {service.upstream_base}{up}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from watchme.registry import RegistryError, load

    parser = argparse.ArgumentParser(prog="python -m watchme.routes", description=__doc__.split("\n")[0])
    parser.add_argument("--registry", metavar="PATH", help="services.yaml (default: group_data/)")
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
