"""Adopting what the operator left where our links go, then linking (one command for all the links of a concern).

`files.link(force=True)` moves a regular file aside under its own name (`<file>.<stamp>`) and
replaces a link to elsewhere without any copy; on the seed's server that link may point into
the operator's git clone, so a backup of the *link* could later restore a link into a
changed (or deleted) directory. Adopting copies the RESOLVED file first, with the project's
one backup naming (watchme/backup.py), then replaces it with our link.

`adopt_links` does that for all the links of a concern (the units, the guard's units, the
site) after one fact and in one command: with a per-path adopt step and stock `files.link`
the deploy's links cost ~4 SSH sessions each (issue 13).
"""

from __future__ import annotations

import posixpath
import shlex

from pyinfra import host, logger
from pyinfra.api import FactBase, QuoteString, StringCommand, operation

from watchme import backup


class LinkStates(FactBase):
    """{path: link target, "" for something that is not a link, None when missing} for many
    paths in one command (stock files.Link costs a session per path)."""

    def command(self, paths: list[str]) -> str:
        # One find for what exists, not a readlink per link; missing ones by the shell alone.
        if not all(p.startswith("/") for p in paths):  # find would take "-x" for an option
            raise ValueError(f"LinkStates takes absolute paths only: {paths}")
        quoted = " ".join(shlex.quote(p) for p in paths)
        return (f"set -- {quoted}\n"
                'for p; do [ -e "$p" ] || [ -L "$p" ] || printf \'missing\\t%s\\n\' "$p"; done\n'
                'find "$@" -maxdepth 0 \\( -type l -printf \'link\\t%p\\t%l\\n\' -o '
                "-printf 'other\\t%p\\n' \\) 2>/dev/null\ntrue")

    def process(self, output):
        out: dict[str, str | None] = {}
        for line in output:
            kind, _, rest = line.partition("\t")
            if kind == "link":
                path, _, target = rest.partition("\t")
                out[path] = target
            elif kind in ("other", "missing"):
                out[rest] = "" if kind == "other" else None
        return out


def adopting(found: dict[str, str | None], links: dict[str, str]) -> set[str]:
    """The paths whose present file or foreign link is kept (backed up) and replaced now."""
    return {p for p, t in links.items() if found.get(p) is not None and found.get(p) != t}


def link_commands(path: str, target: str, found: str | None, backup_dir: str | None = None,
                  seed: str | None = None) -> list[str]:
    """When something else is at path (found is not None): a copy of the resolved file (a
    dangling link has nothing to keep) and, with a seed (a file of ours that starts empty:
    the site), the operator's content put into it, so the safe cycle's first "previous"
    version is what was serving. Then the link, replaced atomically (a link beside it
    renamed over it: never a moment without one)."""
    p, t = shlex.quote(path), shlex.quote(target)
    out = []
    if found is not None:
        out.append(f"if [ -e {p} ]; then {backup.copy_command(path, backup_dir)}; fi")
        if seed:
            s = shlex.quote(seed)
            out.append(f"if [ -s {p} ] && [ ! -s {s} ]; then cp -L -- {p} {s}; fi")
    tmp = shlex.quote(path + ".watchme-new")
    out.append(f"if [ -d {p} ] && [ ! -L {p} ]; then echo {p} is a directory >&2; exit 1; fi")
    out.append(f"mkdir -p -- {shlex.quote(posixpath.dirname(path))}")
    out.append(f"ln -sfn -- {t} {tmp}")
    out.append(f"mv -fT -- {tmp} {p}")
    return out


@operation()
def adopt_links(links: dict[str, str], backup_dir: str | None = None, seed: str | None = None):
    """Each path a symlink to its target, keeping what was there first (link_commands).

    Own operation, not adopt + files.link per path: one fact (LinkStates) and one command
    for all the links of a concern, instead of ~4 SSH sessions per link. A path that already
    links to its target is left alone; a directory in the way fails the operation.
    """
    found = host.get_fact(LinkStates, paths=sorted(links))
    todo = [p for p in sorted(links) if found.get(p) != links[p]]
    if not todo:
        host.noop(f"{len(links)} link(s) already point at their targets")
        return
    for path in todo:
        if found.get(path) is not None:
            what = f"a link to {found[path]}" if found[path] else "a hand-managed file"
            logger.warning(f"{host.print_prefix}{path} is {what}; keeping a copy of the resolved "
                           f"file as {backup.name(path, backup_dir)}<stamp>")
    # The seed (the site) starts empty, so a link to it never dangles on a brand-new server.
    first = [f"umask 022; [ -e {shlex.quote(seed)} ] || : > {shlex.quote(seed)}"] if seed else []
    script = "\n".join(["set -e", *first,
        *(c for path in todo for c in link_commands(path, links[path], found.get(path),
                                                    backup_dir, seed))])
    yield StringCommand("sh", "-c", QuoteString(script))
