"""The deploy lock's pieces that need no pyinfra: who is deploying, the remote script, parsing.

tasks/lock.py explains the design; this module only builds and reads text, so it is
unit-tested without a host.

On the host (all root-owned):
    /run/watchme/deploy.lock          "<sshd pid> <its start time>" then the holder (JSON)
    /run/watchme/deploy.lock.guard    flock(1) target: makes check-and-take atomic
    /run/watchme/deploy.work          flock(1) target: every command a deploy runs to change
                                      the host holds it shared while it runs (0644)
    /var/lib/watchme/last-deploy.json the record of the last deploy that reached its end
    /var/lib/watchme/fact-plan.sh     the fact plan (watchme/prefetch.py), 0600
    /var/lib/watchme/noop-memo        the no-op memo (watchme/noop_memo.py), 0600: written
                                      by a release whose run qualifies, removed by any other

The lock is live while its deploy's SSH session process lives *or* while any of its remote
commands still runs (one holds deploy.work): a long remote step (the Nginx safe cycle, an
apt run) keeps the lock after the connection drops, until the step ends.
"""

from __future__ import annotations

import json
import os
import re
import shlex

# (the holder's commit; ROOT: the checkout)
from watchme.gitcommit import ROOT, ask_commit, commit  # noqa: F401

# (No subprocess, pathlib, datetime or getpass here: `watchme deploy` imports this module
# before its memo check's ssh starts, and those are ~15 ms of imports; the functions that
# need them import them.)
LOCK_DIR = "/run/watchme"  # tmpfs: a reboot ends every session, so it ends every lock too
RECORD = "/var/lib/watchme/last-deploy.json"
PLAN = "/var/lib/watchme/fact-plan.sh"
MEMO = "/var/lib/watchme/noop-memo"
WORK = f"{LOCK_DIR}/deploy.work"
MODES = ("take", "check", "release", "drop", "show", "break", "memo")
FACTS = "@@watchme-facts"  # after this line: the planned facts' answers (watchme/prefetch.py)

# Runs as root. MODE: take | check (a dry run) | release (record + plan, and the memo or
# its removal) | drop (give the lock back, no record) | show / break (`watchme unlock`) |
# memo (`watchme deploy`'s fast path: take the lock as `take` does, run the plan, check
# the answers against the memo with CHECK (watchme/noop_answers.py); on a match record the
# no-op, either way give the lock back). The lock's owner is this SSH
# connection's sshd session process (`sshd: user@notty`, or `sshd-session` from OpenSSH
# 9.8 on): the nearest sshd ancestor of this shell. It lives exactly as long as pyinfra's
# one connection, so a lock whose process is gone (or whose pid now names another process:
# start times differ) and whose remote work has ended (deploy.work free) is stale.
SCRIPT = r"""
set -eu
lock={lock_dir}/deploy.lock
work={work}
record={record}
plan={plan}
memo={memo}
# (The shell's own read where a process would do: every no-op runs this; ~20 processes
# fewer, ~30 ms of the host's time.)
[ -d {lock_dir} ] || mkdir -p {lock_dir}
[ -e "$work" ] || {{ : > "$work"; chmod 0644 "$work"; }}
exec 9>"$lock.guard"
# st: field 22 of /proc/PID/stat (start time), after the ")" that ends the command name
starttime() {{
  st=""; line=""
  IFS= read -r line 2>/dev/null < "/proc/$1/stat" || return 0
  set -- ${{line##*) }}
  st=${{20:-}}
}}
p=$$
while [ "$p" -gt 1 ]; do
  comm=""
  IFS= read -r comm 2>/dev/null < "/proc/$p/comm" || true
  case "$comm" in sshd|sshd-session) break ;; esac
  pp=1
  if [ -r "/proc/$p/status" ]; then
    while read -r k v; do case "$k" in PPid:) pp=$v; break ;; esac; done < "/proc/$p/status"
  fi
  p=$pp
done
inspect() {{
  opid=""; ostart=""; oholder=""; alive=no; why=""
  if [ -s "$lock" ]; then
    {{ read -r opid ostart; IFS= read -r oholder; }} < "$lock" || true
  fi
  [ -n "$opid" ] || return 0
  starttime "$opid"
  if [ "$st" = "$ostart" ]; then alive=yes; why=session; fi
  if ! flock -n -x "$work" true; then alive=yes; why=${{why:-work}}; fi
}}
# F: one planned fact. Its stdout is kept byte for byte (the "." keeps $(...) from eating
# trailing newlines), so a served answer has the very lines a live read gives pyinfra.
F() {{
  rc=0
  if [ "$1" = 1 ] || [ -z "${{SUDO_USER:-}}" ] || [ "$SUDO_USER" = root ]; then
    out=$(sh -c "$3" </dev/null 2>/dev/null; r=$?; echo .; exit $r) || rc=$?
  else
    out=$(runuser -u "$SUDO_USER" -- sh -c "$3" </dev/null 2>/dev/null; r=$?; echo .; exit $r) || rc=$?
  fi
  out=${{out%.}}
  printf '%s %s %s\n' '@@watchme-fact' "$rc" "$2"
  if [ -n "$out" ]; then
    printf '%s' "$out"
    case "$out" in *"
") ;; *) echo ;; esac
  fi
}}
# B: the plan's Python facts (watchme/fact_batch.py), in one python3 started in the
# background while the shell facts run; W prints its answers (the plan's last line).
B() {{
  bout=""
  if [ -n "$BATCH" ] && command -v python3 >/dev/null 2>&1; then
    bout=$(mktemp "{lock_dir}/batch.XXXXXX")
    python3 -S -c "$BATCH" "$1" > "$bout" 2>/dev/null </dev/null &
    bpid=$!
  fi
}}
# (python3 -S: the runner, the host scripts and the checker use the standard library only,
# and site's start-up, Ubuntu's apport hook among it, is ~5 ms of every no-op.)
# run_plan: the whole plan in one python3 (watchme/fact_batch.py run_plan: shell facts in
# two lanes, Python facts in-process, with --check the memo's verdict too); fails (and
# the shell runs the plan's lines) without python3 or with a plan older than its JSON line.
run_plan() {{
  [ -n "$BATCH" ] && command -v python3 >/dev/null 2>&1 &&
    python3 -S -c "$BATCH" plan "$plan" "$@" 2>/dev/null
}}
W() {{
  if [ -n "${{bout:-}}" ]; then
    wait "$bpid" || true
    cat "$bout"; rm -f "$bout"; bout=""
  fi
}}
if [ "$p" -le 1 ] && [ "$MODE" != show ] && [ "$MODE" != break ]; then echo "status=no-session"; exit 0; fi
echo "session=$p"
rec=""
IFS= read -r rec 2>/dev/null < "$record" || true
echo "record=$rec"
waited=0
while :; do
  flock -w 20 9
  inspect
  if [ "$MODE" = take ] || [ "$MODE" = memo ]; then taking=yes; else taking=no; fi
  if [ "$taking" = yes ] && [ "$alive" = yes ] && [ "$opid" != "$p" ] && [ "$waited" -lt "$WAIT" ]; then
    flock -u 9; sleep 2; waited=$((waited + 2)); continue
  fi
  break
done
echo "waited=$waited"
case "$MODE" in
check)
  if [ "$alive" = yes ]; then echo "status=held"; echo "holder=$oholder"; else echo "status=free"; fi ;;
take|memo)
  if [ "$alive" = yes ] && [ "$opid" != "$p" ]; then
    echo "status=held"; echo "holder=$oholder"; echo "holder_pid=$opid"; echo "alive=$why"; exit 0
  fi
  if [ -n "$opid" ] && [ "$alive" = no ]; then echo "stale=$oholder"; fi
  starttime "$p"
  printf '%s %s\n%s\n' "$p" "$st" "$HOLDER" > "$lock.new"
  mv "$lock.new" "$lock"
  echo "status=taken" ;;
release)
  mkdir -p "$(dirname "$record")"
  printf '%s\n' "$RECORD" > "$record.new"
  mv "$record.new" "$record"
  if [ -n "$PLAN" ]; then
    (umask 077; printf '%s' "$PLAN" | base64 -d | gzip -dc > "$plan.new" && mv "$plan.new" "$plan")
  fi
  if [ -n "$MEMO" ]; then
    (umask 077; printf '%s\n' "$MEMO" > "$memo.new" && mv "$memo.new" "$memo")
  else
    rm -f "$memo"
  fi
  if [ "$opid" = "$p" ]; then rm -f "$lock"; echo "status=released"; else echo "status=not-ours"; fi ;;
drop)
  if [ "$opid" = "$p" ]; then rm -f "$lock"; echo "status=released"; else echo "status=not-ours"; fi ;;
show|break)
  if [ -z "$opid" ]; then echo "status=free"; exit 0; fi
  echo "holder=$oholder"; echo "holder_pid=$opid"; echo "alive=${{why:-no}}"
  if [ "$MODE" = show ]; then echo "status=held"
  elif [ "$alive" = yes ] && [ "$FORCE" != 1 ]; then echo "status=live"
  else rm -f "$lock"; echo "status=broken"; fi ;;
esac
exec 9>&-
if [ "$MODE" = take ] || [ "$MODE" = check ]; then
  echo "{facts}"
  if [ "$FACTS" = 1 ] && [ -f "$plan" ]; then run_plan </dev/null || . "$plan"; fi
fi
if [ "$MODE" = memo ]; then
  # (this process holds the lock: no other memo check runs; the verdict file emptied first,
  # so a killed run's leftover under a reused pid can never be read as this run's)
  mout={lock_dir}/memo.$$
  : > "$mout.v"
  # KEY=-: the inputs key comes on stdin (one line), sent while ssh connects; the runner
  # reads it once the plan has run, so neither side waits for the other.
  if [ "$KEY" != - ] && ! grep -qF "\"key\": \"$KEY\"" "$memo" 2>/dev/null; then
    verdict="memo=miss the inputs differ from the memoized run's (or no memo)"
  else
    if [ -f "$plan" ]; then
      run_plan --check "$CHECK" "$memo" "$record" "$KEY" "$mout.v" > "$mout" ||
        . "$plan" > "$mout" </dev/null
    fi
    verdict=""
    IFS= read -r verdict 2>/dev/null < "$mout.v" || true
    if [ -z "$verdict" ]; then
      [ "$KEY" != - ] || IFS= read -r KEY || true
      verdict=$(python3 -S -c "$CHECK" "$memo" "$record" "$KEY" "$mout" 2>/dev/null </dev/null) ||
        verdict="memo=miss the host's python3 could not check the memo"
    fi
  fi
  echo "$verdict"
  exec 9>"$lock.guard"
  flock -w 20 9
  inspect
  case "$verdict" in
  "memo=hit "*)
    if [ "$opid" = "$p" ]; then
      printf '%s\n' "$RECORD" > "$record.new"
      mv "$record.new" "$record"
    fi ;;
  esac
  if [ "$opid" = "$p" ]; then rm -f "$lock"; echo "status=released"; else echo "status=not-ours"; fi
  exec 9>&-
  if [ "$FACTS" = 1 ] && [ "${{verdict#memo=hit }}" != "$verdict" ]; then
    echo "{facts}"
    {{ cat "$plan" 2>/dev/null || true; echo "{facts}"; cat "$mout"; }} | gzip -c | base64 | tr -d '\n'
    echo
  fi
  rm -f "$mout" "$mout.v"
fi
"""

# The first command of a deploy, as the login user: the lock script with sudo, in the same
# round trip; without passwordless sudo it says so and the preflight gives the fix. The
# script is in the command once, its comment lines left out and its Python packed (~19 KB,
# was 31 KB: a new connection's TCP window after the SSH handshake is ~20-25 KB, so on a
# real WAN the command arrives in one flight, not two; the latency proxy cannot show that).
# No `sudo -n true` first (a second sudo, ~12 ms of every no-op): sudo -n that cannot run
# the script exits 1, and the script never does (ROOT_EXIT turns its own 1 into 3), so 1
# here means no passwordless sudo.
AS_ROOT = ('if [ "$(id -u)" = 0 ]; then exec sh -c "$s"; fi; '
           'sudo -H -n sh -c "$s"; r=$?; '
           'if [ "$r" = 1 ]; then echo status=no-sudo; exit 0; fi; exit "$r"')
OPENING = "s={s}; " + AS_ROOT
# The script's first line: an exit status of 1 (set -e's, a command's) leaves it as 3.
ROOT_EXIT = "trap '[ $? != 1 ] || exit 3' EXIT"


def script(mode: str, holder: dict | None = None, record: dict | None = None,
           plan: str = "", wait: int = 0, facts: bool = True, force: bool = False,
           memo: dict | None = None, key: str = "", check: str = "") -> str:
    """The remote shell text for one mode (run as root; values are shell-quoted).

    memo: what `release` writes to the memo file (None: it removes the file). key, check:
    mode memo's inputs key and the checker's source (watchme/noop_answers.py); facts=True
    there sends the plan and its answers back, packed (for the fact record)."""
    assert mode in MODES, mode
    packed = ""
    if plan:  # (imported here: the memo's fast path sends no plan)
        import base64
        import gzip
        packed = base64.b64encode(gzip.compress(plan.encode(), mtime=0)).decode()
    head = (f"MODE={mode}; HOLDER={shlex.quote(json.dumps(holder or {}))}; "
            f"RECORD={shlex.quote(json.dumps(record or {}))}; PLAN={shlex.quote(packed)}; "
            f"WAIT={int(wait)}; FACTS={int(facts)}; FORCE={int(force)}; "
            f"MEMO={shlex.quote(json.dumps(memo, sort_keys=True) if memo else '')}; "
            f"KEY={shlex.quote(key)}; CHECK={shlex.quote(packed_python(check) if check else '')}; "
            f"BATCH={shlex.quote(batch_source() if mode in ('take', 'check', 'memo') else '')}; ")
    body = SENT_SCRIPT.format(lock_dir=LOCK_DIR, work=WORK, record=RECORD, plan=PLAN, memo=MEMO,
                              facts=FACTS)
    return ROOT_EXIT + "; " + head + body


# SCRIPT as sent: without its comment lines (a third of it; none is inside a string).
SENT_SCRIPT = "\n".join(line for line in SCRIPT.splitlines() if not line.lstrip().startswith("#"))


def packed_python(source: str) -> str:
    """Python source as a one-line program that unpacks and runs it (in the globals it is
    run in, so `exec` of it defines what the source defines): zlib + base64, ~48 % of the
    text, no quote or backslash in it. (binascii's base64, C on both ends: base85 was 3 %
    smaller and ~3 ms of pure Python before ssh could start; base64's module imports re.)"""
    import binascii
    import zlib
    packed = binascii.b2a_base64(zlib.compress(source.encode("utf-8"), 9), newline=False).decode()
    return f'import zlib,binascii;exec(zlib.decompress(binascii.a2b_base64("{packed}")))'


def batch_source() -> str:
    """The plan's Python facts' runner (watchme/fact_batch.py) as sent with the lock command
    (packed_python: `python3 -c` runs it as it runs the file's text)."""
    with open(os.path.join(os.path.dirname(__file__), "fact_batch.py"), encoding="utf-8") as f:
        return packed_python(f.read())


def opening(mode: str, **kw) -> str:
    """The script wrapped to run as root from the login user's shell (sudo -n, or root)."""
    return OPENING.format(s=shlex.quote(script(mode, **kw)))


def split(lines: list[str]) -> tuple[list[str], list[str]]:
    """(the lock's key=value lines, the planned facts' lines)."""
    if FACTS in lines:
        i = lines.index(FACTS)
        return lines[:i], lines[i + 1:]
    return lines, []


# The remote work must not depend on the connection: its output goes to files and is
# printed when it ends, and HUP/PIPE are ignored, so a dropped connection neither kills it
# (SIGPIPE on its next write) nor releases the lock before it ends.
HOLD = ('o=$(mktemp) && e=$(mktemp) || exit 1; trap "" HUP PIPE; ( {command} ) >"$o" 2>"$e"; '
        'rc=$?; cat "$o"; cat "$e" >&2; rm -f "$o" "$e"; exit $rc')


def hold(command):
    """A changing command, run so that it holds the deploy's work lock while it runs."""
    from pyinfra.api import QuoteString, StringCommand
    if isinstance(command, str):
        command = StringCommand(command)
    before, after = HOLD.split("{command}")
    inner = StringCommand(before, command, after, separator="")
    return StringCommand("flock", "-s", WORK, "sh", "-c", QuoteString(inner))


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


def safe_name(name: str) -> str:
    """A host name as a local file name (every character but A-Z a-z 0-9 . - becomes _)."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", name)


def now() -> str:
    import time
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def age(since: str, at: datetime | None = None) -> str:
    """'42 s', '3 min', '2 h 5 min' between an ISO time (UTC, Z) and now."""
    from datetime import datetime, timezone
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


def who(env: dict | None = None) -> str:
    """`user@laptop`, or the GitHub actor and the run's URL in CI."""
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") == "true":
        url = (f"{env.get('GITHUB_SERVER_URL', 'https://github.com')}/"
               f"{env.get('GITHUB_REPOSITORY', '?')}/actions/runs/{env.get('GITHUB_RUN_ID', '?')}")
        return f"{env.get('GITHUB_ACTOR', '?')} via GitHub Actions ({url})"
    import getpass
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{os.uname().nodename}"  # gethostname(), without importing socket


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
