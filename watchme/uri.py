"""What nginx does with a request URI: which prefix location takes it, what goes upstream.

Every location in the registry is a prefix location with `proxy_pass http://host:port/uri`.
nginx's rule (ngx_http_proxy_module, proxy_pass): "If proxy_pass is specified with a URI,
then when a request is passed to the server, the part of a normalized request URI matching
the location is replaced by a URI specified in the directive." Without a URI the request
URI goes upstream "in the same form as sent by a client". The query string passes through.

Pure functions, no registry import: the registry's checks and the CLI (watchme/routes.py)
both use them.
"""

from __future__ import annotations

from typing import Any


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


def match(registry: Any, path: str) -> Any:
    """The enabled service whose public_path is the longest prefix of path (nginx's choice
    among prefix locations), or None: nginx would answer 404."""
    norm = normalize(path.partition("?")[0])
    found = [s for s in registry.enabled_services if norm.startswith(s.public_path)]
    return max(found, key=lambda s: len(s.public_path), default=None)
