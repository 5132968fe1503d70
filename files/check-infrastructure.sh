#!/bin/sh
# check-infrastructure.sh: the seed's health check, kept so the operator's habit still works:
#   bash <config_root>/scripts/check-infrastructure.sh
# watchme-guard.timer runs it every 5 minutes (see journalctl -u watchme-guard.service).
#
# Does nothing (exit 0, says so) while a deploy holds the lock (deploy_lock.py): the deploy
# runs the same checks itself at its end. Otherwise runs both checks, even when the first fails:
#   1. network_monitor.py: watchme-network members (--fix --flap-window when the data says so)
#   2. disk_guard.py: prune Docker when its disk is above the threshold
# with the settings the deploy rendered into ../monitor/guard.env (edits there are
# overwritten by the next deploy: change group_data instead). Extra arguments go to the
# network check, e.g. --json or --check (then the disk guard only reads, too).
#
# Exit: 0 when both checks pass (network problems that --fix repaired count as passed) or a
# deploy is running; otherwise the network check's code (1 problems remain, 3 could not
# check) or, if that passed, the disk guard's (1 still full or prune failed, 3 could not
# check). Non-zero makes watchme-guard.service fail, so it shows in `systemctl --failed`.
set -u
here=$(cd "$(dirname "$0")" && pwd)
MONITOR_ARGS=""
DISK_ARGS=""
env_file=${WATCHME_GUARD_ENV:-$here/../monitor/guard.env}
if [ -r "$env_file" ]; then
    # shellcheck source=/dev/null  # rendered by the deploy from templates/guard.env.j2
    . "$env_file"
fi
if ! python3 "$here/deploy_lock.py"; then
    echo "guard skipped: a deploy is running"
    exit 0
fi
for a in "$@"; do
    # a read-only look: no --fix, no prune
    [ "$a" = "--check" ] && MONITOR_ARGS="" && DISK_ARGS="$DISK_ARGS --check"
done

# shellcheck disable=SC2086  # the *_ARGS are word lists on purpose
python3 "$here/network_monitor.py" $MONITOR_ARGS "$@"
net=$?
[ "$net" -eq 2 ] && net=0
# shellcheck disable=SC2086
python3 "$here/disk_guard.py" $DISK_ARGS
disk=$?
[ "$net" -ne 0 ] && exit "$net"
exit "$disk"
