"""Test stand-in for the deploy's fact recorder: `python -m tests.fact_recorder <pyinfra args>`.

Runs pyinfra with its SSH connector wrapped: every command and its answer is written to
`$WATCHME_RECORD_DIR/<host>.facts.json` in the record format watchme/replay.py reads.
With `-y` pyinfra reads facts while executing (no plan-time check), so every phase is
recorded; the tests record a run that changes nothing, so every answer is the converged
state (a later answer to the same command replaces an earlier one). The deploy's own recorder replaces this
once it lands; the format is the contract between them.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import sys
from pathlib import Path

from pyinfra.connectors.ssh import SSHConnector
from pyinfra_cli.main import main

RECORDS: dict[str, dict] = {}
_orig = SSHConnector.run_shell_command


def _recording(self, command, *args, **arguments):
    ok, output = _orig(self, command, *args, **arguments)
    raw = command if isinstance(command, str) else command.get_raw_value()
    executor = {k: v for k, v in arguments.items() if k.startswith("_")
                and isinstance(v, (str, bool, int, type(None)))}
    facts = RECORDS.setdefault(self.host.name, {})
    facts[(raw, json.dumps(executor, sort_keys=True))] = {
        "command": raw, "executor": executor, "rc": 0 if ok else 1,
        "stdout": list(output.stdout_lines)}
    return ok, output


def _save() -> None:
    out = Path(os.environ["WATCHME_RECORD_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    for host, facts in RECORDS.items():
        safe = re.sub(r"[^A-Za-z0-9.-]", "_", host)
        (out / f"{safe}.facts.json").write_text(json.dumps(
            {"version": 1, "host": host, "facts": list(facts.values())}, indent=1))


if __name__ == "__main__":
    SSHConnector.run_shell_command = _recording
    atexit.register(_save)
    sys.argv[0] = "pyinfra"
    sys.exit(main())
