"""The `replay` pyinfra connector: answer a dry run from recorded facts, offline.

A pull request must never reach production (issue 10): its job has no SSH key and no
secret. It still previews, per host, what merging would change: the last deploy of `main`
wrote each host's fact record (`<host>.facts.json`, see below), the PR job downloads it and
runs `pyinfra --dry` with the hosts named `@replay/<record file>`. This connector answers
every command from the record by (command, executor) and never opens a connection.

Record format (written by the deploy when WATCHME_RECORD_DIR is set):

    {"version": 1, "host": "<inventory name>",
     "facts": [{"command": "<raw command>", "executor": {"_sudo": true, ...},
                "rc": 0, "stdout": ["line", ...]}]}

A command the record does not hold (a fact the PR's new code reads, a lock check) is a
miss: it is answered as an empty success (the fact's default, e.g. "file absent") and
logged as `not recorded: <command>`, so the preview says what it could not see. Uploads
and downloads are refused: a dry run makes none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pyinfra import logger
from pyinfra.api.exceptions import ConnectError
from pyinfra.connectors.base import BaseConnector, ConnectorData, DataMeta
from pyinfra.connectors.util import CommandOutput, OutputLine

if TYPE_CHECKING:
    from pyinfra.api.command import StringCommand

VERSION = 1
MISS = "not recorded: "
# Executor arguments that change what runs on the host. Timeouts, PTYs, retries and exit
# code lists do not change the answer; values that are off (False/None/empty/"sh") are
# pyinfra's defaults, so a recorder that keeps them and one that drops them agree.
MEANINGFUL = ("_sudo", "_sudo_user", "_use_sudo_login", "_preserve_sudo_env", "_su_user",
              "_use_su_login", "_preserve_su_env", "_su_shell", "_doas", "_doas_user", "_dzdo",
              "_dzdo_user", "_shell_executable", "_chdir", "_env")
DEFAULTS = {"_shell_executable": "sh"}


class RecordError(Exception):
    """A record file that cannot be replayed; the message names the file and the fix."""


def executor_key(executor: dict) -> str:
    kept = {k: v for k, v in executor.items()
            if k in MEANINGFUL and v not in (None, False, "", {}, [])
            and DEFAULTS.get(k) != v}
    return json.dumps(kept, sort_keys=True, default=str)


def load(path: str | Path) -> dict:
    """A record file, checked: {"host", "answers": {(command, executor_key): (rc, stdout)}}."""
    path = Path(path)
    fix = "fix: download the fact record of a successful deploy of main (WATCHME_RECORD_DIR)"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RecordError(f"{path}: not a fact record ({e}); {fix}") from e
    if not isinstance(record, dict) or record.get("version") != VERSION:
        raise RecordError(f"{path}: version is not {VERSION}; {fix}")
    if not isinstance(record.get("host"), str) or not isinstance(record.get("facts"), list):
        raise RecordError(f"{path}: needs \"host\" (text) and \"facts\" (list); {fix}")
    answers = {}
    for i, fact in enumerate(record["facts"]):
        try:
            key = (fact["command"], executor_key(fact.get("executor") or {}))
            answers[key] = (int(fact["rc"]), [str(line) for line in fact["stdout"]])
        except (KeyError, TypeError, ValueError) as e:
            raise RecordError(f"{path}: facts[{i}] needs command, rc and stdout ({e}); {fix}") from e
    return {"host": record["host"], "answers": answers}


def short(command: str) -> str:
    first = command.strip().splitlines()[0] if command.strip() else ""
    return first[:117] + "..." if len(first) > 120 or "\n" in command.strip() else first


class ReplayConnectorData(ConnectorData, total=False):
    replay_file: str


class ReplayConnector(BaseConnector):
    """Answers commands from a recorded fact file; never connects anywhere.

    Inventory name: `@replay/<path to host.facts.json>`; the host takes the record's name.
    """

    handles_execution = True
    data_cls = ReplayConnectorData
    data_meta = {"replay_file": DataMeta("The fact record this host is answered from")}

    def __init__(self, state, host) -> None:
        super().__init__(state, host)
        self.answers: dict = {}
        self.misses: list[str] = []

    @staticmethod
    def make_names_data(name: str | None = None) -> Iterator[tuple[str, dict, list[str]]]:
        if not name:
            raise RecordError("@replay needs a record file: @replay/<dir>/<host>.facts.json")
        for path in name.split(","):
            record = load(path)
            yield record["host"], {"replay_file": path}, []

    def connect(self) -> None:
        try:
            self.answers = load(self.data["replay_file"])["answers"]
        except RecordError as e:
            raise ConnectError(str(e)) from e

    def run_shell_command(self, command: str | StringCommand, print_output: bool = False,
                          print_input: bool = False, **arguments) -> tuple[bool, CommandOutput]:
        if self.state.is_executing:
            # Only a dry run may come here: executing would report changes it never made.
            raise ConnectError("replay: a recorded host cannot be changed; run pyinfra --dry")
        raw = command if isinstance(command, str) else command.get_raw_value()
        answer = self.answers.get((raw, executor_key(arguments)))
        if answer is None:
            self.misses.append(raw)
            logger.warning(f"{self.host.print_prefix}{MISS}{short(raw)}")
            return True, CommandOutput([])
        rc, stdout = answer
        return rc == 0, CommandOutput([OutputLine("stdout", line) for line in stdout])

    def put_file(self, *args, **kwargs) -> bool:
        raise ConnectError("replay: a preview uploads nothing (was this run without --dry?)")

    def get_file(self, *args, **kwargs) -> bool:
        raise ConnectError("replay: a preview downloads nothing; the record has no files")
