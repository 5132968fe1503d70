"""One deploy at a time per host, a record of the last deploy, and the fact plan's round trip.

    lock.acquire()   right after connection.tune(): the first thing a deploy does on a host
    lock.release()   the last line of deploy.py: the last operation

Design (chosen after reading pyinfra 3.10's api/operation.py and api/operations.py):

- The lock is *taken while deploy.py is loaded* (pyinfra's prepare stage), by one command
  sent straight through the host's connection, not by an operation. So it is held before
  any fact is read for the plan (a deploy never plans from a half-applied state of
  another one), a second deploy fails at once (or waits up to `lock_wait_seconds`, polling
  on the host inside that one command), before it reads or changes anything, and taking
  it is no operation at all, so it can never count as a change. A dry run (`--dry`) only
  looks: it warns when a deploy is in progress and takes nothing.
- That same command is the deploy's first and only round trip before planning: it runs
  as root through `sudo -n` (falling back to saying "no sudo", so the bootstrap preflight
  gives the fix), takes the lock, prints the last deploy's record, and runs every fact of
  the fact plan kept on the host (watchme/prefetch.py). A CI runner with no local state
  is as fast as the laptop that deployed last.
- The lock names its owner by process, not by time: all of one pyinfra run's commands go
  through one SSH connection, served on the host by one `sshd: user@notty` process that
  lives exactly as long as the connection. The lock file records that pid (and its start
  time, against pid reuse) with the holder: who, which commit, since when. Checking and
  taking it run under flock(1), so two deploys started at once cannot both win.
- The lock is held by the remote work too: every command the deploy runs to change the
  host is wrapped in `flock -s /run/watchme/deploy.work` (watchme/lock.hold). If the
  connection drops during a long step (the Nginx safe cycle, an apt run), the step goes on
  and the lock stays live until it ends; only then is it stale.
- A stale lock (session gone, no remote work running) is taken over, with a warning naming
  the deploy that left it. That covers a killed deploy and a dropped connection; there is
  no timeout to tune and no way for a live deploy to lose its lock. `watchme unlock` shows
  the holder and breaks a stale lock (a live one only with --force).
- A deploy from a commit that is an ancestor of the last deployed one (git merge-base
  --is-ancestor, locally, with the record's commit) stops, unless `--data allow_older=true`.
  A commit this checkout does not know (a shallow CI clone) is not judged.
- Release is a custom operation, "Release the deploy lock", that yields no command: pyinfra
  runs an operation's body again when it executes it, so the body sends the release and
  writes the record (and the fact plan) then, and the operation still reports "No
  changes". The idempotence gate therefore stays exact.
- A failed operation ends a host's deploy before the release; a state callback on
  operation errors releases the lock and records the failure then (the plan is kept). If
  even that cannot run (connection lost), the lock is stale once the session and the
  remote work end. So is the lock of a run that never executes after taking it (an error
  while deploy.py loads, a declined prompt, `--json` without `-y`).

- The no-op memo (watchme/noop_memo.py): the release of a run started by `watchme deploy`
  (WATCHME_MEMO_KEY set) that changed nothing, failed nothing, ran nothing on the host and
  read only facts its plan holds writes /var/lib/watchme/noop-memo: the inputs key, the
  hash of the answers it used (watchme/noop_answers.py), its operations (for --json) and
  the warnings it printed (shown again on a memo hit: they are part of its answer). Every
  other release removes the memo. The lock's own warnings (stale lock, deploy in
  progress, older commit) are the lock's, not the deploy's: they are not memoized.

The record (/var/lib/watchme/last-deploy.json): status, start and end time, who, commit,
how many operations changed and which. When WATCHME_RECORD_DIR is set, the deploy also
writes `<dir>/<host>.json` locally ({"host", "last_deploy", "lock"}) for
`watchme summary --records DIR` (the workflows use it for the job summary), and the fact
record `<dir>/<host>.facts.json` (watchme/prefetch.py) for the offline PR preview.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import BaseStateCallback, StringCommand, operation
from pyinfra.api.exceptions import DeployError

from watchme import lock as wl
from watchme import noop_answers, noop_memo, prefetch

_HELD: dict[str, dict] = {}  # host name -> {"session", "holder"} while this run holds it


class _Warnings(logging.Handler):
    """The warnings (and errors) pyinfra's logger prints for each host, for the memo."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.by_host: dict[str, list[list[str]]] = {}
        self.prefixes: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for name, prefix in self.prefixes.items():
            if message.startswith(prefix):
                self.by_host[name].append([record.levelname, message[len(prefix):]])
                return


_WARNINGS = _Warnings()


def _dry() -> bool:
    # pyinfra keeps --dry to its CLI; a dry run executes nothing, so it must not lock.
    return "--dry" in sys.argv[1:]


def _run(h, mode: str, **kw) -> tuple[bool, dict, list[str], str]:
    """Run the lock script as root; bookkeeping, never a change (no fact answers dropped)."""
    p = getattr(h, "_watchme_prefetch", None)
    run = p._orig_run if p else h.run_shell_command
    ok, output = run(StringCommand(wl.opening(mode, **kw)), _sudo=False)
    lock_lines, fact_lines = wl.split(output.stdout_lines)
    return ok, wl.parse(lock_lines), fact_lines, "\n".join(output.stderr_lines)


def _save_local(name: str, last_deploy: dict | None, lock_holder: dict | None) -> None:
    out = os.environ.get("WATCHME_RECORD_DIR")
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"{prefetch.safe_name(name)}.json").write_text(json.dumps(
        {"host": name, "last_deploy": last_deploy, "lock": lock_holder}, indent=2) + "\n")


def older(local: str, deployed: str | None, cwd=wl.ROOT) -> bool:
    """Whether commit `local` is a strict ancestor of `deployed` (unknown commits: no)."""
    local, deployed = (local or "").removesuffix("-dirty"), (deployed or "").removesuffix("-dirty")
    if not local or not deployed or "unknown" in (local, deployed) or local == deployed:
        return False  # the usual no-op: the same commit again, no git call needed
    try:
        shas = []
        for ref in (local, deployed):
            r = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{ref}^{{commit}}"],
                               cwd=cwd, capture_output=True, text=True, timeout=10)
            if r.returncode != 0:
                return False  # a commit this checkout does not have: not judged
            shas.append(r.stdout.strip())
        if shas[0] == shas[1]:
            return False
        return subprocess.run(["git", "merge-base", "--is-ancestor", *shas], cwd=cwd,
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError, ValueError):
        return False


def acquire() -> None:
    """Take this host's deploy lock now (a dry run only looks) and serve the planned facts."""
    mode = "check" if _dry() else "take"
    me = wl.holder()
    p = prefetch.install()
    wait = int(host.data.get("lock_wait_seconds", 0) or 0)
    ok, out, fact_lines, err = _run(host, mode, holder=me, wait=wait, facts=p is not None)
    if out.get("status") == "no-sudo":
        return  # tasks/bootstrap.py's preflight refuses this host with the fix
    if not ok:
        raise DeployError(f"{host.name}: could not check the deploy lock: {err or out}")
    if out.get("status") == "no-session":
        raise DeployError(f"{host.name}: the deploy lock needs an SSH connection (no sshd "
                          "process above the deploy's commands)")
    if out.get("status") == "held" and mode == "take":
        _save_local(host.name, out.get("record"), out.get("holder"))
        what = ("its remote work is still running" if out.get("alive") == "work"
                else f"its SSH session, pid {out.get('holder_pid')}, is alive")
        waited = f" (waited {out.get('waited')} s)" if wait else ""
        raise DeployError(f"{host.name}: another deploy holds the lock: "
                          f"{wl.describe_holder(out.get('holder'))}; {what}{waited}; fix: wait "
                          "for it to end, raise lock_wait_seconds, or `watchme unlock` if it "
                          "is stale")
    held_by = out.get("holder") if out.get("status") == "held" else None
    if held_by:
        logger.warning(f"{host.print_prefix}a deploy is in progress ("
                       f"{wl.describe_holder(held_by)}): this preview may change when it ends")
    if out.get("stale"):
        logger.warning(f"{host.print_prefix}took over the deploy lock left by "
                       f"{wl.describe_holder(out['stale'])}: its SSH session had ended")
    if out.get("waited", "0") != "0":
        logger.info(f"{host.print_prefix}waited {out['waited']} s for the deploy lock")
    record = out.get("record")
    logger.info(f"{host.print_prefix}last deploy: {wl.describe_record(record)}")
    _save_local(host.name, record, held_by)
    if mode == "take":
        _HELD[host.name] = {"session": out.get("session"), "holder": me}
        _register_callback(host.state)
    if p is not None:
        p.serve(fact_lines)
    deployed = (record or {}).get("commit")
    if older(me["commit"], deployed):
        msg = (f"{host.name}: this checkout's commit {me['commit']} is older than the last "
               f"deployed commit {deployed}")
        if _dry() or host.data.get("allow_older", False):
            logger.warning(f"{host.print_prefix}{msg}")
        else:
            _HELD.pop(host.name, None)
            _run(host, "drop", facts=False)
            raise DeployError(f"{msg}; fix: deploy a newer commit (git pull), or roll back on "
                              "purpose with --data allow_older=true")
    if mode == "take" and p is not None:
        p.wrap = wl.hold  # from now on every change holds the work lock while it runs
    if mode == "take":  # from here on a warning is the deploy's (memoized with its answer)
        _WARNINGS.prefixes[host.name] = host.print_prefix
        _WARNINGS.by_host[host.name] = []
        if _WARNINGS not in logger.handlers:
            logger.addHandler(_WARNINGS)


def _changed_ops(state, h) -> list[str]:
    names = []
    for op_hash in state.get_op_order():
        op_data = state.ops[h].get(op_hash)
        meta = op_data.operation_meta if op_data else None
        if meta and meta.is_complete() and meta.did_change():
            names.append(", ".join(sorted(state.get_op_meta(op_hash).names)))
    return names


def _operations(state, h) -> list[dict] | None:
    """This host's operations as pyinfra's --json lists them; None if one did not succeed."""
    from pyinfra_cli.prints import pretty_op_name
    ops = []
    for op_hash in state.get_op_order():
        op_data = state.ops[h].get(op_hash)
        if op_data is None:
            continue
        meta = op_data.operation_meta
        if meta.is_complete() and not meta.did_succeed(_raise_if_not_complete=False):
            return None
        op_meta = state.op_meta[op_hash]
        ops.append({"op_hash": op_hash, "name": pretty_op_name(op_meta),
                    "names": sorted(op_meta.names), "args": list(op_meta.args)})
    return ops


def _memo(state, h, p, changed: list[str], commit: str) -> tuple[dict | None, str]:
    """The memo this run leaves on the host, or (None, why not)."""
    key = os.environ.get(noop_memo.KEY_ENV)
    if not key:
        return None, "not run by `watchme deploy`"
    if changed:
        return None, f"{len(changed)} operations changed"
    if p is None:
        return None, "no fact plan (WATCHME_NO_PREFETCH)"
    blocks, why = p.memo_blocks()
    if blocks is None:
        return None, why
    ops = _operations(state, h)
    if ops is None:
        return None, "an operation failed"
    return {"key": noop_memo.host_key(key, h.name),
            "answers": noop_answers.answers_hash(blocks, commit), "commit": commit,
            "facts": noop_answers.fact_digests(blocks), "operations": ops,
            "warnings": _WARNINGS.by_host.get(h.name, [])}, ""


def _finish(state, h, status: str, failed_op: str | None = None) -> None:
    """Write the record and release the lock; both are bookkeeping, never operations."""
    held = _HELD.pop(h.name, None)
    if held is None:
        return
    changed = _changed_ops(state, h)
    record = {"status": status, "started": held["holder"]["since"], "finished": wl.now(),
              "by": held["holder"]["by"], "commit": held["holder"]["commit"],
              "changed": len(changed), "changed_operations": changed}
    if failed_op:
        record["failed_operation"] = failed_op
    p = getattr(h, "_watchme_prefetch", None)
    plan = p.plan_text() if p is not None and status == "ok" else ""
    memo, why = (_memo(state, h, p, changed, record["commit"]) if status == "ok"
                 else (None, "the deploy failed"))
    logger.info(f"{h.print_prefix}no-op memo: " + ("written" if memo else f"none ({why})"))
    try:
        ok, out, _, err = _run(h, "release", record=record, plan=plan, facts=False, memo=memo)
    except Exception as e:  # noqa: BLE001 - a lost connection: the lock goes stale instead
        ok, out, err = False, {}, str(e)
    if not ok:
        logger.warning(f"{h.print_prefix}could not release the deploy lock ({err.strip()}); "
                       "it is stale once this connection closes")
        return
    if out.get("status") == "not-ours":
        logger.warning(f"{h.print_prefix}the deploy lock was no longer this deploy's")
    logger.info(f"{h.print_prefix}deploy lock released; recorded: {wl.describe_record(record)}")
    _save_local(h.name, record, None)


class _ReleaseOnError(BaseStateCallback):
    @staticmethod
    def operation_host_error(state, host, op_hash, retry_count=0, max_retries=0):
        op_data = state.get_op_data_for_host(host, op_hash)
        if op_data.global_arguments.get("_ignore_errors"):
            return  # the deploy goes on; the last operation releases
        _finish(state, host, "failed", ", ".join(sorted(state.get_op_meta(op_hash).names)))


def _register_callback(state) -> None:
    if not any(isinstance(c, _ReleaseOnError) for c in state.callback_handlers):
        state.add_callback_handler(_ReleaseOnError())


@operation()
def _release():
    if host.state.is_executing:
        _finish(host.state, host, "ok")
    yield from ()  # no command: releasing the lock is not a change of the server


def release() -> None:
    """The deploy's last operation: release the lock and record the deploy."""
    _release(name="Release the deploy lock")
