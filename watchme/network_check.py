"""The deploy's own run of the host's network check (files/network_monitor.py) at its end.

A fact runs the monitor without --fix when the deploy collects facts, before any change.
The operation runs it again with --fix, at the end, only when it can matter: when that
first look found something to fix (a running container detached or on the wrong IP, the
network wrong, or no answer at all), or when an earlier operation of this deploy changed
something. Otherwise the first look is still true, so it reports that and changes nothing,
and a deploy with nothing to do stays a no-op (the JSON idempotence gate).

Outcome: a running container still detached or on the wrong IP after the fix (or no answer
from Docker) fails the deploy. Missing and stopped containers, and a missing network while
no member runs, are warnings: a new server has no services yet, and starting them is the
units' job.
"""

from __future__ import annotations

import json
import shlex

from pyinfra import host, logger
from pyinfra.api import FactBase, FunctionCommand, operation

from watchme import remote
from watchme.fact_batch import Call

FIXABLE = ("detached", "wrong_ip")
DOWN = ("missing", "stopped")


class NetworkReport(FactBase):
    """The monitor's --json report and exit code, {"exit": int, "report": dict | None};
    None when the monitor is not installed yet."""

    def call(self, script: str, members: str) -> Call:
        return Call(script=script, argv=["--json", "--members", members, "--check"], merge=True,
                    exit_line=True)

    def command(self, script: str, members: str) -> str:
        return self.call(script, members).command()

    def process(self, output):
        return parse(list(output))


def monitor_command(script: str, members: str, fix: bool) -> str:
    s, m = shlex.quote(script), shlex.quote(members)
    return (f"if [ -f {s} ] && command -v python3 >/dev/null; then "
            f"python3 {s} --json --members {m} {'--fix' if fix else '--check'} 2>&1; "
            'echo "@@exit=$?"; fi')


def parse(lines: list[str]) -> dict | None:
    if not lines or not lines[-1].startswith("@@exit="):
        return None
    code = int(lines[-1].split("=", 1)[1])
    try:
        report = json.loads("\n".join(lines[:-1]))
    except ValueError:
        report = None
    return {"exit": code, "report": report, "output": lines[:-1]}


def verdict(result: dict | None) -> tuple[list[str], list[str]]:
    """(errors that fail the deploy, warnings) for a monitor result after --fix."""
    report = (result or {}).get("report")
    if not report:
        out = " ".join((result or {}).get("output", []))[-300:]
        return [f"network monitor gave no report (exit {(result or {}).get('exit')}): {out}"], []
    if report["status"] == "unchecked":
        return [f"network monitor could not check: {report['error']}"], []
    errors, warnings = [], []
    running = [m for m in report["members"] if m["state"] in ("running", "paused")]
    for m in report["members"]:
        if m["status"] in FIXABLE and not m["fixed"]:
            errors.append(f"{m['container']} is running but {_where(m)} (wanted "
                          f"{m['expected_ip']} on {report['network']['name']})"
                          + (f": {m['error']}" if m["error"] else ""))
        elif m["status"] in DOWN:
            warnings.append(f"{m['container']} ({m['expected_ip']}) is {m['status']}"
                            + (f" ({m['state']})" if m["state"] else "")
                            + "; its unit starts it")
        if m.get("oom_killed"):
            warnings.append(f"{m['container']} was killed (exit {m['exit_code']}: the OOM "
                            "killer, or a SIGKILL) with a memory limit of "
                            f"{size(m['memory'])}")
        if m.get("memory_ok") is False:
            warnings.append(f"{m['container']} runs with a memory limit of "
                            f"{size(m['memory'])}, the registry says {size(m['memory_limit'])}")
    net = report["network"]
    if not net["ok"]:
        what = (f"network {net['name']} is missing" if not net["exists"] else
                f"network {net['name']} has subnet {net['found_subnet']} gw "
                f"{net['found_gateway']}, wanted {net['subnet']} gw {net['gateway']}")
        (errors if running and net["exists"] else warnings).append(what)
    return errors, warnings


def size(n: int | None) -> str:
    """Bytes as Docker's flags spell them (as files/network_monitor.py prints them)."""
    if not n:
        return "unlimited" if n == 0 else "?"
    for unit, factor in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}b"


def _where(m: dict) -> str:
    return "not attached" if m["status"] == "detached" else f"attached at {m['ip']}"


def summary(report: dict) -> str:
    """One line, counting members as they are now: "3 ok (1 reconnected), 1 stopped"."""
    members = report["members"]
    fixed = sum(1 for m in members if m["fixed"])
    ok = sum(1 for m in members if m["status"] == "ok") + fixed
    parts = [f"{ok} ok" + (f" ({fixed} reconnected)" if fixed else "")] if ok else []
    for status in ("detached", "wrong_ip", "stopped", "missing"):
        n = sum(1 for m in members if m["status"] == status and not m["fixed"])
        if n:
            parts.append(f"{n} {status}")
    return f"network monitor: {report['network']['name']}: {', '.join(parts) or 'no members'}"


def needs_run(result: dict | None) -> bool:
    """Whether the first look found anything --fix or a second look could change."""
    report = (result or {}).get("report")
    if not report or report["status"] == "unchecked":
        return True
    running = any(m["state"] in ("running", "paused") for m in report["members"])
    return (any(m["status"] in FIXABLE for m in report["members"])
            or (not report["network"]["ok"] and running))


def changed_before(state, host) -> bool:
    """Whether an operation before this one changed (executing) or may change (preparing)."""
    if not state.is_executing:
        return state.get_meta_for_host(host).ops_change > 0
    for op_hash, data in state.ops[host].items():
        meta = data.operation_meta
        if op_hash != host.current_op_hash and meta.is_complete() and meta.did_change():
            return True
    return False


def _log(host, result: dict | None) -> bool:
    """Print the report's outcome; False when it must fail the deploy."""
    errors, warnings = verdict(result)
    report = (result or {}).get("report")
    if report and report["status"] != "unchecked":
        fixed = [m for m in report["members"] if m["fixed"]]
        for m in fixed:
            logger.warning(f"{host.print_prefix}network monitor: {m['container']} was "
                           f"{_where(m)}; reconnected at {m['expected_ip']}")
        logger.info(f"{host.print_prefix}{summary(report)}")
    for w in warnings:
        logger.warning(f"{host.print_prefix}network monitor: warning: {w}")
    for e in errors:
        logger.error(f"{host.print_prefix}network monitor: {e}")
    return not errors


def _run_and_report(state, host, script: str, members: str, fix: bool) -> bool:
    _, out, err = remote.run(state, host, monitor_command(script, members, fix))
    return _log(host, parse(out))


@operation()
def network_check(script: str, members: str, fix: bool = True):
    """Run the monitor (with --fix) and print its report; see the module docstring."""
    state = host.state
    first = host.get_fact(NetworkReport, script=script, members=members)
    if not needs_run(first) and not changed_before(state, host):
        if state.is_executing:  # the body also runs once when preparing: report once
            _log(host, first)
        host.noop(summary(first["report"]))
        return
    yield FunctionCommand(_run_and_report, (script, members, fix), {})
