"""One deploy at a time per host, and a record of the last deploy on the host.

    lock.acquire()   right after connection.tune(): the first thing a deploy does on a host
    lock.release()   the last line of deploy.py: the last operation

Design (chosen after reading pyinfra 3.10's api/operation.py and api/operations.py):

- The lock is *taken while deploy.py is loaded* (pyinfra's prepare stage), by one command
  sent straight through the host's connection, not by an operation. So it is held before
  any fact is read for the plan (a deploy never plans from a half-applied state of
  another one), a second deploy fails at once, before it reads or changes anything, and
  taking it is no operation at all, so it can never count as a change. A dry run
  (`--dry`) only looks: it warns when a deploy is in progress and takes nothing.
- The lock names its owner by process, not by time: all of one pyinfra run's commands go
  through one SSH connection, served on the host by one `sshd: user@notty` process that
  lives exactly as long as the connection. The lock file records that pid (and its start
  time, against pid reuse) with the holder: who, which commit, since when. Checking and
  taking it run under flock(1), so two deploys started at once cannot both win.
- A lock whose process is gone is stale and is taken over, with a warning naming the
  deploy that left it. That covers a killed deploy and a dropped connection, which end
  sshd's process; there is no timeout to tune and no way for a live deploy to lose its
  lock. (A connection that hangs without closing keeps its sshd until sshd's ClientAlive
  checks or TCP give up; that is the one case an operator may wait for.)
- Release is a custom operation, "Release the deploy lock", that yields no command: pyinfra
  runs an operation's body again when it executes it, so the body sends the release and
  writes the record then, and the operation still reports "No changes". The idempotence
  gate therefore stays exact: lock bookkeeping is not a change of the server.
- A failed operation ends a host's deploy before the release; a state callback on
  operation errors releases the lock and records the failure then. If even that cannot
  run (connection lost), pyinfra's disconnect ends the session and the lock is stale.
  So is the lock of a run that never executes after taking it (an error while deploy.py
  loads, a declined prompt, `--json` without `-y`): the next deploy takes it over.

The record (/var/lib/watchme/last-deploy.json): status, start and end time, who, commit,
how many operations changed and which. When WATCHME_RECORD_DIR is set, the deploy also
writes `<dir>/<host>.json` locally ({"host", "last_deploy", "lock"}) for
`watchme summary --records DIR` (the workflows use it for the job summary).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import BaseStateCallback, StringCommand, operation
from pyinfra.api.exceptions import DeployError

from watchme import lock as wl

_HELD: dict[str, dict] = {}  # host name -> {"session", "holder"} while this run holds it


def _dry() -> bool:
    # pyinfra keeps --dry to its CLI; a dry run executes nothing, so it must not lock.
    return "--dry" in sys.argv[1:]


def _run(h, mode: str, **kw) -> tuple[bool, dict, str]:
    ok, output = h.run_shell_command(StringCommand(wl.script(mode, **kw)), _sudo=True)
    return ok, wl.parse(output.stdout_lines), "\n".join(output.stderr_lines)


def _save_local(name: str, last_deploy: dict | None, lock_holder: dict | None) -> None:
    out = os.environ.get("WATCHME_RECORD_DIR")
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9.-]", "_", name)
    (Path(out) / f"{safe}.json").write_text(json.dumps(
        {"host": name, "last_deploy": last_deploy, "lock": lock_holder}, indent=2) + "\n")


def acquire() -> None:
    """Take this host's deploy lock now (or, in a dry run, report who holds it)."""
    mode = "check" if _dry() else "take"
    me = wl.holder()
    ok, out, err = _run(host, mode, holder=me)
    if not ok:
        if "sudo" in err and "password" in err:
            return  # tasks/bootstrap.py's preflight refuses this host with the fix
        raise DeployError(f"{host.name}: could not check the deploy lock: {err or out}")
    if out.get("status") == "no-session":
        raise DeployError(f"{host.name}: the deploy lock needs an SSH connection (no sshd "
                          "process above the deploy's commands)")
    if out.get("status") == "held" and mode == "take":
        _save_local(host.name, out.get("record"), out.get("holder"))
        raise DeployError(f"{host.name}: another deploy holds the lock: "
                          f"{wl.describe_holder(out.get('holder'))}; fix: wait for it to end"
                          f" (it ends when its SSH session, pid {out.get('holder_pid')}, does)")
    held_by = out.get("holder") if out.get("status") == "held" else None
    if held_by:
        logger.warning(f"{host.print_prefix}a deploy is in progress ("
                       f"{wl.describe_holder(held_by)}): this preview may change when it ends")
    if out.get("stale"):
        logger.warning(f"{host.print_prefix}took over the deploy lock left by "
                       f"{wl.describe_holder(out['stale'])}: its SSH session had ended")
    logger.info(f"{host.print_prefix}last deploy: {wl.describe_record(out.get('record'))}")
    _save_local(host.name, out.get("record"), held_by)
    if mode == "take":
        _HELD[host.name] = {"session": out.get("session"), "holder": me}
        _register_callback(host.state)


def _changed_ops(state, h) -> list[str]:
    names = []
    for op_hash in state.get_op_order():
        op_data = state.ops[h].get(op_hash)
        meta = op_data.operation_meta if op_data else None
        if meta and meta.is_complete() and meta.did_change():
            names.append(", ".join(sorted(state.get_op_meta(op_hash).names)))
    return names


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
    try:
        ok, out, err = _run(h, "release", record=record)
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
