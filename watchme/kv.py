"""The one `key=value` line parser: host scripts and facts print key=value lines, this reads
them (the lock, the host profile and doctor all used their own copy before)."""

from __future__ import annotations

from typing import Iterable


def parse(lines: Iterable[str] | str) -> dict[str, str]:
    """`key=value` lines -> {key: value}; lines without '=' are ignored, the last key wins.

    Values keep inner '=' (`a=b=c` -> {"a": "b=c"}); keys and values are stripped.
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    out: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out
