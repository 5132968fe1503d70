#!/usr/bin/env python3
"""Is a deploy running on this host? The guard asks before it changes anything.

    deploy_lock.py            exit 0: no deploy holds the lock; exit 1: one does (prints who)

The deploy's lock (watchme/lock.py) is /run/watchme/deploy.lock: first line "<pid>
<starttime>" of the process that holds it, then the holder as JSON. It is held while that
process lives: /proc/<pid>/stat's 22nd field (start time in clock ticks) equals starttime
(a recycled pid has another start time). A stale or missing lock is free.
"""

from __future__ import annotations

import json
import os
import sys

LOCK = os.environ.get("WATCHME_DEPLOY_LOCK", "/run/watchme/deploy.lock")


def start_time(stat: str) -> str | None:
    """Field 22 of a /proc/<pid>/stat line; the command name (field 2) may hold spaces."""
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None  # fields[0] is field 3


def holder(lock_text: str, read_stat) -> dict | None:
    """The holder when the lock is alive, else None; read_stat(pid) -> stat text or None."""
    lines = lock_text.splitlines()
    parts = lines[0].split() if lines else []
    if len(parts) != 2 or not parts[0].isdigit():
        return None
    stat = read_stat(parts[0])
    if stat is None or start_time(stat) != parts[1]:
        return None
    try:
        return json.loads(lines[1]) if len(lines) > 1 else {}
    except ValueError:
        return {"raw": lines[1]}


def _read_stat(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read()
    except OSError:
        return None


def main() -> int:
    try:
        with open(LOCK) as f:
            text = f.read()
    except OSError:
        return 0
    h = holder(text, _read_stat)
    if h is None:
        return 0
    print(f"a deploy holds {LOCK}: {h.get('by', '?')}, commit {h.get('commit', '?')}, "
          f"since {h.get('since', '?')}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
