"""The deploy lock's pieces that need no pyinfra: who is deploying, the remote script, parsing.

tasks/lock.py explains the design; this module only builds and reads text, so it is
unit-tested without a host.

On the host (all root-owned):
    /run/watchme/deploy.lock          "<sshd pid> <its start time>" then the holder (JSON)
    /run/watchme/deploy.lock.guard    flock(1) target: makes check-and-take atomic
    /var/lib/watchme/last-deploy.json the record of the last deploy that reached its end
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = "/run/watchme"  # tmpfs: a reboot ends every session, so it ends every lock too
RECORD = "/var/lib/watchme/last-deploy.json"

# MODE is take, check or release. The lock's owner is this SSH connection's sshd session
# process (`sshd: user@notty`, or `sshd-session` from OpenSSH 9.8 on): the nearest sshd
# ancestor of this shell. It lives exactly as long as pyinfra's one connection, so a lock
# whose process is gone (or whose pid now names another process: start times differ)
# belongs to a deploy that ended without releasing it, and is stale.
SCRIPT = r"""
set -eu
lock={lock_dir}/deploy.lock
record={record}
mkdir -p {lock_dir}
exec 9>"$lock.guard"
flock -w 20 9
starttime() {{ sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }}
p=$$
while [ "$p" -gt 1 ]; do
  case "$(cat /proc/$p/comm)" in sshd|sshd-session) break ;; esac
  p=$(awk '/^PPid:/ {{print $2}}' "/proc/$p/status")
done
if [ "$p" -le 1 ]; then echo "status=no-session"; exit 0; fi
echo "session=$p"
echo "record=$(cat "$record" 2>/dev/null | head -n1)"
opid=""; ostart=""; oholder=""
if [ -s "$lock" ]; then
  read -r opid ostart < "$lock" || true
  oholder=$(sed -n 2p "$lock")
fi
alive=no
if [ -n "$opid" ] && [ "$(starttime "$opid")" = "$ostart" ]; then alive=yes; fi
case "$MODE" in
check)
  if [ "$alive" = yes ]; then echo "status=held"; echo "holder=$oholder"; else echo "status=free"; fi ;;
take)
  if [ "$alive" = yes ] && [ "$opid" != "$p" ]; then
    echo "status=held"; echo "holder=$oholder"; echo "holder_pid=$opid"; exit 0
  fi
  if [ -n "$opid" ] && [ "$alive" = no ]; then echo "stale=$oholder"; fi
  printf '%s %s\n%s\n' "$p" "$(starttime "$p")" "$HOLDER" > "$lock.new"
  mv "$lock.new" "$lock"
  echo "status=taken" ;;
release)
  mkdir -p "$(dirname "$record")"
  printf '%s\n' "$RECORD" > "$record.new"
  mv "$record.new" "$record"
  if [ "$opid" = "$p" ]; then rm -f "$lock"; echo "status=released"; else echo "status=not-ours"; fi ;;
esac
"""


def script(mode: str, holder: dict | None = None, record: dict | None = None) -> str:
    """The remote shell text for one mode (run with sudo; values are shell-quoted)."""
    assert mode in ("take", "check", "release"), mode
    head = (f"MODE={mode}; HOLDER={shlex.quote(json.dumps(holder or {}))}; "
            f"RECORD={shlex.quote(json.dumps(record or {}))}; ")
    return head + SCRIPT.format(lock_dir=LOCK_DIR, record=RECORD)


def parse(lines: list[str]) -> dict:
    """The script's key=value lines; JSON values (holder, stale, record) decoded, or None."""
    out: dict = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key in ("holder", "stale", "record"):
            try:
                value = json.loads(value) if value.strip() else None
            except ValueError:
                value = {"raw": value}
        out[key] = value
    return out


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def age(since: str, at: datetime | None = None) -> str:
    """'42 s', '3 min', '2 h 5 min' between an ISO time (UTC, Z) and now."""
    try:
        then = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return "?"
    secs = int(((at or datetime.now(timezone.utc)) - then).total_seconds())
    if secs < 120:
        return f"{max(secs, 0)} s"
    if secs < 7200:
        return f"{secs // 60} min"
    return f"{secs // 3600} h {secs % 3600 // 60} min"


def commit(env: dict | None = None) -> str:
    """The deploying checkout's commit (short), '-dirty' when tracked files differ from it."""
    env = os.environ if env is None else env
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               text=True, capture_output=True, timeout=10).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return (env.get("GITHUB_SHA") or "unknown")[:7]


def who(env: dict | None = None) -> str:
    """`user@laptop`, or the GitHub actor and the run's URL in CI."""
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") == "true":
        url = (f"{env.get('GITHUB_SERVER_URL', 'https://github.com')}/"
               f"{env.get('GITHUB_REPOSITORY', '?')}/actions/runs/{env.get('GITHUB_RUN_ID', '?')}")
        return f"{env.get('GITHUB_ACTOR', '?')} via GitHub Actions ({url})"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


def holder(env: dict | None = None) -> dict:
    return {"by": who(env), "commit": commit(env), "since": now()}


def describe_holder(h: dict | None) -> str:
    """'alice@laptop, commit abc1234, since 2026-...Z (42 s ago)'."""
    h = h or {}
    return (f"{h.get('by', '?')}, commit {h.get('commit', '?')}, since {h.get('since', '?')} "
            f"({age(h.get('since', ''))} ago)")


def describe_record(r: dict | None) -> str:
    """One line for a last-deploy record."""
    if not r:
        return "no deploy recorded on this host yet"
    changed = r.get("changed", "?")
    line = (f"{r.get('status', '?')} at {r.get('finished', '?')} by {r.get('by', '?')}, "
            f"commit {r.get('commit', '?')}: {changed} changed operation"
            f"{'' if changed == 1 else 's'}")
    if r.get("failed_operation"):
        line += f"; failed at {r['failed_operation']!r}"
    return line
