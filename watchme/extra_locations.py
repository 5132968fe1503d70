"""Extra locations: the live site's hand-written locations that are not container services.

The seed's server answers `location = /health { return 200 "ok\\n"; }` and proxies `/status/`
to a process on the host; neither is a registry service (no container, an exact match, a
`return`). Adoption must keep them answering, so the registry carries them as
`extra_locations:` entries, written by `watchme import`:

    extra_locations:
      - location: = /health
        config: |
          access_log off;
          default_type text/plain;
          return 200 "ok\\n";

No registry text reaches Nginx as written: `config` is parsed with crossplane, every
directive must be on the allow-list below with arguments of the allowed shape, and the site
gets crossplane's re-emitted block (`nginx()`). Regex locations and any other directive
(root, alias, rewrite, set, fastcgi_pass, ...) are refused with the reason, so the importer
reports such a location as not expressible and the deploy's route-removal guard stops.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import crossplane

# Matches the site may use: plain prefix and exact. Regex matches reorder the site's
# matching and take arbitrary PCRE; they stay hand work.
MODIFIERS = {"": "prefix", "=": "exact match"}
PATH = re.compile(r"/[A-Za-z0-9._~/-]*", re.ASCII)
# The only variables a value may name: the four standard proxy headers' values.
HEADER_VALUES = {"Host": "$host", "X-Real-IP": "$remote_addr",
                 "X-Forwarded-For": "$proxy_add_x_forwarded_for", "X-Forwarded-Proto": "$scheme"}
LOOPBACK = r"(localhost|127\.0\.0\.1|\[::1\])"
PROXY = re.compile(rf"http://{LOOPBACK}:(\d{{1,5}})(/[A-Za-z0-9._~/-]*)?", re.ASCII)
# A literal value: printable ASCII without quotes, braces, ';', '#', '$' or backtick.
LITERAL = re.compile(r"[A-Za-z0-9 !%&()*+,./:<=>?@\[\]\\^_|~-]*", re.ASCII)
SIZE = re.compile(r"\d{1,6}[kKmMgG]?", re.ASCII)
MIME = re.compile(r"[a-z]+/[a-z0-9.+-]+", re.ASCII)
HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}", re.ASCII)


class ExtraLocationError(ValueError):
    """Why a location cannot be an extra location, one problem per item."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _time(value: str) -> str | None:
    from watchme.registry import _nginx_time

    try:
        _nginx_time(value)
    except ValueError as e:
        return str(e)
    return None


def _literal(value: str) -> bool:
    return LITERAL.fullmatch(value) is not None


def _is_preflight(d: dict) -> bool:
    body = d.get("block", [])
    return (d["args"] == ["$request_method", "=", "OPTIONS"] and len(body) == 1
            and body[0]["directive"] == "return" and body[0]["args"] == ["204"])


def _directive_problems(d: dict, modifier: str, path: str) -> list[str]:
    name, args = d["directive"], d["args"]
    shown = f"`{name} {' '.join(args)}`"
    if name == "return":
        if not args or not re.fullmatch(r"[1-5]\d\d", args[0]) or len(args) > 2:
            return [f"{shown}: return takes a status code and at most one text or URL"]
        if len(args) == 2 and not _literal(args[1]):
            return [f"{shown}: the text may not contain quotes, braces, ';', '#' or variables"]
        return []
    if name == "access_log":
        return [] if args == ["off"] else [f"{shown}: only `access_log off` is allowed"]
    if name == "default_type":
        return [] if len(args) == 1 and MIME.fullmatch(args[0]) else [f"{shown}: not a MIME type"]
    if name == "add_header":
        ok = (len(args) in (2, 3) and HEADER_NAME.fullmatch(args[0]) and _literal(args[1])
              and args[2:] in ([], ["always"]))
        return [] if ok else [f"{shown}: a header name, a literal value, optionally `always`"]
    if name == "proxy_set_header":
        if len(args) == 2 and HEADER_VALUES.get(args[0]) == args[1]:
            return []
        return [f"{shown}: only {', '.join(f'{k} {v}' for k, v in HEADER_VALUES.items())}"]
    if name == "proxy_pass":
        m = PROXY.fullmatch(args[0]) if len(args) == 1 else None
        if not m or not 1 <= int(m.group(2)) <= 65535:
            return [f"{shown}: only http://localhost|127.0.0.1|[::1]:PORT[/path] (a process "
                    "on the host; containers are registry services)"]
        target = m.group(3)
        if not modifier and target is not None and path.endswith("/") != target.endswith("/"):
            return [f"{shown}: the proxy_pass path and the location disagree on the trailing slash"]
        return []
    if name == "client_max_body_size":
        return [] if len(args) == 1 and SIZE.fullmatch(args[0]) else [f"{shown}: not a size"]
    if name in ("proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout"):
        why = _time(args[0]) if len(args) == 1 else "one value"
        return [f"{shown}: {why}"] if why else []
    if name == "if":
        return [] if _is_preflight(d) else [
            f"{shown}: only the CORS preflight `if ($request_method = OPTIONS) {{ return 204; }}`"]
    return [f"directive `{name}` is not allowed in an extra location (allowed: return, "
            "access_log, default_type, add_header, proxy_pass, proxy_set_header, "
            "client_max_body_size, proxy_*_timeout, the CORS preflight if)"]


def split_match(location: str) -> tuple[str, str]:
    """"= /health" -> ("=", "/health"); "/status/" -> ("", "/status/")."""
    parts = location.split()
    return ("", parts[0]) if len(parts) == 1 else (parts[0], " ".join(parts[1:]))


def match_problems(location: str) -> list[str]:
    parts = location.split()
    if not 1 <= len(parts) <= 2:
        return [f"location {location!r}: expected an optional '=' and a path"]
    modifier, path = split_match(location)
    out = []
    if modifier not in MODIFIERS:
        kind = {"~": "regex match", "~*": "case-insensitive regex match",
                "^~": "prefix match that stops regex search"}.get(modifier, f"modifier {modifier!r}")
        out.append(f"{kind} ('{modifier}'): extra locations are prefix or exact ('=') matches")
    if not PATH.fullmatch(path):
        out.append(f"path {path!r} may use only letters, digits and ._~/- after a leading /")
    return out


def parse(location: str, config: str) -> list[dict]:
    """The location as a checked crossplane tree (one `location` directive); raises
    ExtraLocationError listing every problem."""
    problems = match_problems(location)
    if problems:
        raise ExtraLocationError(problems)
    modifier, path = split_match(location)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "extra.conf"
        # The config is parsed as the body of the location, never as text of the site.
        f.write_text(f"location {location} {{\n{config}\n}}\n")
        out = crossplane.parse(str(f), single=True, check_ctx=False, check_args=False,
                               comments=False)
    if out["errors"] or not out["config"]:
        why = out["errors"][0]["error"] if out["errors"] else "empty"
        raise ExtraLocationError([f"config does not parse as an nginx block: {why}"])
    tree = out["config"][0]["parsed"]
    if len(tree) != 1 or tree[0]["directive"] != "location" or \
            tree[0]["args"] != ([modifier, path] if modifier else [path]):
        raise ExtraLocationError(["config closes the location's block or adds blocks after it"])
    block = tree[0].get("block", [])
    if not block:
        raise ExtraLocationError(["config is empty: the location would serve the site's root"])
    for d in block:
        problems += _directive_problems(d, modifier, path)
    if not any(d["directive"] in ("return", "proxy_pass") for d in block):
        problems.append("no `return` and no `proxy_pass`: nothing would answer")
    if problems:
        raise ExtraLocationError(problems)
    return tree


def body(block: list[dict]) -> str:
    """A parsed location block's directives as config text (what the importer writes)."""
    return crossplane.build(block, indent=2) + "\n"


def nginx(tree: list[dict], indent: int = 4) -> str:
    """The checked location, re-emitted by crossplane and indented for the server block."""
    text = crossplane.build(tree, indent=4)
    pad = " " * indent
    return "\n".join(pad + line if line else line for line in text.splitlines())
