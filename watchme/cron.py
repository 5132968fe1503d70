"""The seed's guard crontab line (`*/5 * * * * .../scripts/check-infrastructure.sh`, in the
ubuntu user's crontab, maybe root's), found and removed once watchme-guard.timer takes over.

Two guards at once would race each other's reconnects; the guard task removes the line in
the same run that starts the timer, after a backup of the whole crontab named by
watchme/backup.py (`<backup_dir>/var_spool_cron_crontabs_<user>.backup.YYYYmmdd_HHMMSS`).
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, operation

from watchme import backup

USERS = ("ubuntu", "root")
# The seed's scripts, wherever its clone was: a line running either is the old guard.
PATTERN = r"(check-infrastructure\.sh|network_monitor\.py)"


class GuardCronLines(FactBase):
    """{user: [crontab lines running the seed's guard]}; {} without cron (crontab missing)."""

    def command(self, users: tuple[str, ...] = USERS) -> str:
        # One awk per user (was grep | grep | sed: 8 processes of every no-op for two users).
        program = shlex.quote("!/^[[:space:]]*#/ && /" + PATTERN + '/ { print u " " $0 }')
        return "; ".join(f"crontab -u {shlex.quote(u)} -l 2>/dev/null | "
                         f"awk -v u={shlex.quote(u)} {program}" for u in users) + "; true"

    def process(self, output):
        found: dict[str, list[str]] = {}
        for line in output:
            user, _, rest = line.partition(" ")
            found.setdefault(user, []).append(rest)
        return found


def remove_commands(user: str, backup_dir: str) -> list[str]:
    """Back the user's crontab up, then install it again without the guard's lines."""
    u = shlex.quote(user)
    target = backup.shell_target(f"/var/spool/cron/crontabs/{user}", backup_dir)
    return [f"mkdir -p {shlex.quote(backup_dir)} && crontab -u {u} -l > {target}",
            f"crontab -u {u} -l | {{ grep -vE {shlex.quote(PATTERN)} || true; }} | crontab -u {u} -"]


@operation()
def remove_guard_cron_lines(backup_dir: str, users: tuple[str, ...] = USERS):
    """No stock operation fits: server.crontab matches one exact command and keeps no backup.
    Removes every line that runs the seed's guard scripts from each user's crontab."""
    found = host.get_fact(GuardCronLines, users=users)
    if not found:
        host.noop("no crontab line runs the old guard")
        return
    for user in users:
        if found.get(user):
            yield from remove_commands(user, backup_dir)
