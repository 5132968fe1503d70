"""The deploying checkout's commit, asked of git as early as `watchme deploy` can.

git answers in ~10 ms, in parallel with the imports the memo check needs; this module
imports nothing but os and watchme/spawn.py, so `watchme deploy` starts git first.
"""

from __future__ import annotations

import os

from watchme.spawn import Proc

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_ASKED: list = []  # git's answers under way (ask_commit), for the next commit()


def ask_commit() -> None:
    """Start commit()'s two git questions now (`watchme deploy` does before its imports:
    the holder is needed before its first ssh command, `git status` takes ~20 ms)."""
    procs: list = []
    try:
        for cmd in (["rev-parse", "--short", "HEAD"], ["status", "--porcelain", "--untracked-files=no"]):
            procs.append(Proc(["git", "-C", ROOT, *cmd], stderr=False))
    except OSError:
        pass
    _ASKED.append(procs)


def commit(env: dict | None = None) -> str:
    """The deploying checkout's commit (short), '-dirty' when tracked files differ from it."""
    env = os.environ if env is None else env
    if not _ASKED:
        ask_commit()
    procs = _ASKED.pop()
    try:  # both at once
        if len(procs) != 2:
            raise OSError("git did not start")
        (sha, _), (dirty, _) = (p.communicate(timeout=10) for p in procs)
        if procs[0].returncode != 0:
            raise OSError("git rev-parse failed")
        return f"{sha.strip()}-dirty" if dirty.strip() else sha.strip()
    except (OSError, TimeoutError):
        for p in procs:
            p.kill()
        return (env.get("GITHUB_SHA") or "unknown")[:7]
