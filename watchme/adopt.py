"""Adopting what the operator left where our links go, before stock `files.link` replaces it.

`files.link(force=True)` moves a regular file aside under its own name (`<file>.<stamp>`) and
replaces a link to elsewhere without any copy; on the seed's server that link may point into
the operator's git clone, so a backup of the *link* could later restore a link into a
changed (or deleted) directory. This step runs first and copies the RESOLVED file with the
project's one backup naming (watchme/backup.py); `files.link(force=True, force_backup=False)`
then only has to replace what is already kept.
"""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import operation
from pyinfra.facts.files import Link

from watchme import backup


@operation()
def adopt(path: str, target: str, backup_dir: str | None = None, seed: str | None = None):
    """Keep a copy of whatever is at `path` (resolved) unless it already links to `target`.

    backup_dir: None keeps the copy beside the file (the seed's `<file>.backup.<stamp>`).
    seed: a file of ours that starts empty (the site); it is filled with the operator's
    resolved file, so the safe cycle's first "previous" version is what was serving.
    A missing path or a dangling link has nothing to keep; a directory fails (cp without -r).
    """
    info = host.get_fact(Link, path=path)
    if info is None:
        host.noop(f"{path} does not exist yet")
        return
    if info and info["link_target"] == target:
        host.noop(f"{path} already links to {target}")
        return
    what = f"a link to {info['link_target']}" if info else "a hand-managed file"
    logger.warning(f"{host.print_prefix}{path} is {what}; keeping a copy of the resolved file "
                   f"as {backup.name(path, backup_dir)}<stamp>")
    p = shlex.quote(path)
    yield f"if [ -e {p} ]; then {backup.copy_command(path, backup_dir)}; fi"
    if seed:
        s = shlex.quote(seed)
        yield f"if [ -s {p} ] && [ ! -s {s} ]; then cp -L -- {p} {s}; fi"
