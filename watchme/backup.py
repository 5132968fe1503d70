"""One naming rule for backups, the seed's: `<name>.backup.YYYYmmdd_HHMMSS`.

The seed's runbook makes every backup as `cp file file.backup.$(date +%Y%m%d_%H%M%S)` and
restores "the newest backup"; the deploy keeps that name so the seed's own `ls *.backup.*`
still finds them. Backups copy the *resolved* file (`cp -L`): a backup of a symlink would
restore a link into a directory that may have changed since (e.g. the operator's git clone).
"""

from __future__ import annotations

import posixpath
import shlex
import time

STAMP_FORMAT = "%Y%m%d_%H%M%S"
# The same stamp computed on the host, for commands (the host's clock names its files).
SHELL_STAMP = "$(date +%Y%m%d_%H%M%S)"


def stamp(when: float | None = None) -> str:
    return time.strftime(STAMP_FORMAT, time.localtime(when))


def name(path: str, backup_dir: str | None = None) -> str:
    """The backup's path without the stamp: beside the file, or flattened into backup_dir
    (/etc/nginx/sites-available/x -> backup_dir/etc_nginx_sites-available_x)."""
    if backup_dir is None:
        return f"{path}.backup."
    return posixpath.join(backup_dir, path.strip("/").replace("/", "_")) + ".backup."


def shell_target(path: str, backup_dir: str | None = None) -> str:
    """A shell word for the backup path, quoted, with the host's timestamp appended."""
    return shlex.quote(name(path, backup_dir)) + SHELL_STAMP


def copy_command(path: str, backup_dir: str | None = None) -> str:
    """Copy the resolved file (never a link) to its timestamped backup; fails if it cannot."""
    mk = f"mkdir -p {shlex.quote(backup_dir)} && " if backup_dir else ""
    return f"{mk}cp -pL -- {shlex.quote(path)} {shell_target(path, backup_dir)}"
