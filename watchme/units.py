"""systemd unit files linked into /etc/systemd/system (the seed's layout): the fact that lists
them and the operation that links one without ever losing a hand-written file.
"""

from __future__ import annotations

import posixpath
import shlex

from pyinfra import host
from pyinfra.api import FactBase, operation


class UnitFiles(FactBase):
    """Every *.service in a directory: {file name: link target, or None for a regular file}."""

    def command(self, directory: str) -> str:
        d = shlex.quote(directory)
        return (f"for f in {d}/*.service; do "
                'if [ -L "$f" ]; then echo "link ${f##*/} $(readlink "$f")"; '
                'elif [ -f "$f" ]; then echo "file ${f##*/}"; fi; done')

    def process(self, output):
        units: dict[str, str | None] = {}
        for line in output:
            kind, _, rest = line.partition(" ")
            if kind == "link":
                name, _, target = rest.partition(" ")
                units[name] = target
            elif kind == "file":
                units[rest] = None
        return units


class VendorUnits(FactBase):
    """Names of the units the OS packages ship (docker.service, nginx.service, ...)."""

    def command(self) -> str:
        return "ls /lib/systemd/system /usr/lib/systemd/system 2>/dev/null | grep '[.]service$' | sort -u"

    def process(self, output):
        return set(output)


def ours(units: dict[str, str | None], target_dir: str) -> list[str]:
    """Names of the links that point into target_dir: the units this deploy made."""
    prefix = target_dir.rstrip("/") + "/"
    return sorted(n for n, t in units.items() if t and t.startswith(prefix))


@operation()
def unit_link(path: str, target: str):
    """path is a symlink to target. A regular file already there (a hand-written unit) is
    kept as path.backup.YYYYmmdd_HHMMSS first, never silently replaced."""
    units = host.get_fact(UnitFiles, directory=posixpath.dirname(path))
    name = posixpath.basename(path)
    if name in units and units[name] == target:
        host.noop(f"{path} already links to {target}")
        return
    if name in units and units[name] is None:
        yield f"mv {shlex.quote(path)} {shlex.quote(path)}.backup.$(date +%Y%m%d_%H%M%S)"
    yield f"ln -sfn {shlex.quote(target)} {shlex.quote(path)}"
