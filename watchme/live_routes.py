"""The routes Nginx serves now, read from `nginx -T` with a real parser (crossplane).

A first deploy on the seed's server must not silently drop a hand-written location the
registry does not list. This reads every `location` of the live server blocks for
server_name and says which ones the rendered site would drop.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import crossplane
from pyinfra.api import FactBase

from watchme.nginx import ACME_PATH

_HEADER = re.compile(r"^# configuration file (.+):$")


class LiveNginxConfig(FactBase):
    """`nginx -T` as {file path: text}; {} when Nginx is missing or its config is broken."""

    @staticmethod
    def default():
        return {}

    def command(self) -> str:
        return "if command -v nginx >/dev/null; then nginx -T 2>/dev/null || true; fi"

    def process(self, output):
        return split_dump(output)


def split_dump(lines) -> dict[str, str]:
    """`nginx -T` output (text or lines) as {path: content}, split at its
    `# configuration file X:` lines; the one reader of that dump (route guard, import)."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    files: dict[str, list[str]] = {}
    current = None
    for line in lines:
        m = _HEADER.match(line)
        if m:
            current = m.group(1)
            files[current] = []
        elif current is not None:
            files[current].append(line)
    return {path: "\n".join(body) + "\n" for path, body in files.items()}


def _parse(text: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "site.conf"
        path.write_text(text)
        # single: includes were already expanded by nginx -T into their own files.
        out = crossplane.parse(str(path), single=True, check_ctx=False, check_args=False,
                               catch_errors=True)
    return out["config"][0]["parsed"] if out["config"] else []


def _servers(block: list[dict]):
    for d in block:
        if d["directive"] == "server":
            yield d.get("block", [])
        elif "block" in d:
            yield from _servers(d["block"])


def _ours(location: dict) -> bool:
    """The ACME webroot and a bare redirect: the rendered site adds its own."""
    path = location["args"][-1] if location["args"] else ""
    body = [d for d in location.get("block", []) if d["directive"] != "#"]
    redirect = (len(body) == 1 and body[0]["directive"] == "return"
                and body[0]["args"][:1] in (["301"], ["302"], ["307"], ["308"]))
    return path.startswith(ACME_PATH.rstrip("/")) or redirect


def locations(files: dict[str, str], server_name: str) -> set[str]:
    """`location` keys ("= /x", "/api/") of every server block answering server_name."""
    out = set()
    for text in (files or {}).values():
        for server in _servers(_parse(text)):
            names = {a for d in server if d["directive"] == "server_name" for a in d["args"]}
            if server_name not in names:
                continue
            for d in server:
                if d["directive"] == "location" and not _ours(d):
                    out.add(" ".join(d["args"]))
    return out


def dropped(live: dict[str, str], rendered: str, server_name: str) -> list[str]:
    """Live locations of server_name that the rendered site does not have, sorted."""
    return sorted(locations(live, server_name) - locations({"rendered": rendered}, server_name))
