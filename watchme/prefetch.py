"""Read every fact of a deploy in the lock's round trip, keeping pyinfra's stock operations.

pyinfra 3 runs one remote command per fact it reads (it keeps no fact cache), so a no-op
deploy of ~70 stock operations costs ~200 SSH round trips. This records which facts a run
read (class, arguments, connector arguments) and the exact command pyinfra would run for
each, and keeps that *fact plan on the host*, so a CI runner or a new laptop (no local
state) is as fast as the machine that deployed last:

    /var/lib/watchme/fact-plan.sh   root:root 0600, written by the last successful deploy in
                                    the same command as the lock release (tasks/lock.py)

Each line of the plan is `F <sudo 0|1> '<identity>' '<command>'` (values shell-quoted by
shlex; F is defined by the lock script in watchme/lock.py). The next deploy's first remote
command takes the lock and sources the plan, running every planned fact, each its own
command (as root, or as the login user for `_sudo=False` facts), and prints
`@@watchme-fact <rc> <identity>` before each fact's stdout. Locally each answer goes
through the fact's own `process()`, so operations read exactly what they would have read
one by one. The identity carries a hash of the command: a fact whose command this checkout
builds differently (new code, new arguments) is not served, it is read live.

The answers are served only while nothing has changed the host: the first command or
upload that an operation executes on the host drops them all, and from then on every fact
is read live again, as stock pyinfra does. A no-op deploy therefore reads all its facts in
the lock's round trip; a deploy that changes things is never served a stale answer. A fact
that failed, one the plan does not know yet, or one with connector arguments other than
`_sudo` (a `_sudo_user`, an `_env`, ...) is read the stock way.

The no-op memo (watchme/noop_memo.py): `memo_blocks()` gives the plan this run writes with the
answer this run used for each of its facts, when that is the whole truth: nothing ran on
the host, every fact the run read is in the plan, and each was read once in effect (served,
or read live and kept). tasks/lock.py hashes them (watchme/noop_answers.py) into the memo
of a zero-change run; the memo's check hashes the next plan's output the same way. So the
first no-op after a converge, which reads the facts the converge could not plan (a file
that did not exist had no sha256 to read) live, already writes a complete plan and a memo.

Fact record (for the offline PR preview): when WATCHME_RECORD_DIR is set, the run writes
`<dir>/<safe host name>.facts.json` (safe: every character but A-Z a-z 0-9 . - becomes _):

    {"version": 1, "host": "<inventory name>",
     "facts": [{"command": "<raw fact command, exactly _fact_command()>",
                "executor": {<the connector arguments pyinfra passed, e.g. "_sudo": true, ...>},
                "rc": 0, "stdout": ["line", ...]}, ...]}

It covers every fact the run read, batched and live, one entry per (command, executor): a
fact read again after a change keeps its last answer (the host as the run left it). `rc`
is 0 when the command succeeded, else 1 (pyinfra keeps no exit code), and a fact whose
`requires_command` is missing answers rc 0 with pyinfra's own marker line as stdout, as
pyinfra itself sees it. The record holds what the facts print (hashes, package lists,
unit states, file metadata): review a new fact for secrets before it is added.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import importlib
import json
import os
import shlex
from pathlib import Path

from pyinfra import logger
from pyinfra.api import FactBase, ShortFactBase, StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
# Private helpers of pyinfra 3.10 (pinned): we must build the very command pyinfra would.
from pyinfra.api.facts import _MISSING_COMMAND_MARKER as MISSING, _handle_fact_kwargs, _make_command
from pyinfra.context import ctx_host, ctx_state

from watchme import lock as wl
from watchme.fact_batch import PLAN_JSON

PLAN = "/var/lib/watchme/fact-plan.sh"
MARK = "@@watchme-fact"
PLAN_HEADER = ("# watchme fact plan v1: written by the last deploy (watchme/prefetch.py), "
               "sourced as root by the next one's lock command (watchme/lock.py)\n")
# Connector arguments the host-side runner reproduces; any other non-default one is read live.
_DEFAULTS = {"_sudo_user": None, "_use_sudo_login": False, "_preserve_sudo_env": False,
             "_su_user": None, "_doas": False, "_dzdo": False, "_chdir": None, "_env": {},
             "_get_pty": False, "_stdin": None, "_shell_executable": "sh"}


def _key(cls, fact_kwargs: dict, executor: dict) -> str:
    return json.dumps([cls.__module__, cls.__qualname__, fact_kwargs, executor],
                      sort_keys=True, default=str)


def _fact_command(fact: FactBase, fact_kwargs: dict) -> str:
    """The command pyinfra itself would run for this fact (see pyinfra.api.facts._get_fact).

    The same instance must then process the output: some facts keep their arguments.
    """
    command = _make_command(fact.command, dict(fact_kwargs))
    requires = _make_command(fact.requires_command, dict(fact_kwargs))
    raw = command.get_raw_value() if isinstance(command, StringCommand) else str(command)
    if requires:
        # Exactly pyinfra's wrapper (api/facts.py _get_fact): the offline replay looks a fact
        # up by the command string pyinfra sends, so the record must hold that very string.
        raw = StringCommand("if", "command", "-v", requires, ">/dev/null", "2>&1;", "then", "(",
                            StringCommand(raw), ");", "else", "echo", f"'{MISSING}';", "fi"
                            ).get_raw_value()
    return raw


def _sha(command: str) -> str:
    return hashlib.sha256(command.encode()).hexdigest()[:16]


def runnable(executor: dict) -> bool:
    """Whether the plan's host-side runner reproduces these connector arguments exactly."""
    if not isinstance(executor.get("_sudo", False), bool):
        return False
    return all(not executor.get(k) or executor.get(k) == d for k, d in _DEFAULTS.items())


safe_name = wl.safe_name  # the record files' names (watchme/lock.py)


class Prefetch:
    def __init__(self, state, host):
        self.state, self.host = state, host
        self.answers: dict[str, object] = {}
        self.seen: dict[str, list] = {}
        self.reading = 0  # >0 while pyinfra runs a fact command (not a change)
        self.served = 0
        self.generation = 0  # counts changes: a live answer read across one is not kept
        self.record: dict[str, dict] = {}  # (command, executor) -> what the host answered
        self.unplanned: list[str] = []  # facts read the stock way, outside any plan
        self.previous: dict[str, list] = {}  # the served plan's facts (kept by a changing run)
        self._capture: list | None = None
        self.wrap = None  # set by tasks/lock.py: wraps each changing command (lock holding)

    # -- the three host methods we wrap ----------------------------------------------------
    def get_fact(self, cls, *args, **kwargs):
        if isinstance(cls, type) and issubclass(cls, ShortFactBase):
            return cls().process_data(self.get_fact(cls.fact, *args, **kwargs))  # as pyinfra
        if not isinstance(cls, type) or not issubclass(cls, FactBase):
            self.unplanned.append(repr(cls))
            return self._orig_get_fact(cls, *args, **kwargs)
        fact_kwargs, global_kwargs = _handle_fact_kwargs(self.state, self.host, cls, args, kwargs)
        fact_kwargs = {k: v for k, v in fact_kwargs.items() if k != "self"}  # getcallargs adds it
        executor = {k: v for k, v in global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS}
        try:
            key = _key(cls, fact_kwargs, executor)
            entry = [cls.__module__, cls.__qualname__, json.loads(json.dumps(fact_kwargs)), executor]
            json.dumps(entry)
        except (TypeError, ValueError):
            self.unplanned.append(cls.__qualname__)
            return self._orig_get_fact(cls, *args, **kwargs)  # arguments we cannot record
        self.seen.setdefault(key, entry)
        if key in self.answers:
            self.served += 1
            return copy.deepcopy(self.answers[key])  # operations may modify what they read
        self.reading += 1
        self._capture = []
        generation = self.generation
        try:
            value = self._orig_get_fact(cls, *args, **kwargs)
        finally:
            self.reading -= 1
            captured, self._capture = self._capture, None
        if captured:
            try:
                command = _fact_command(cls(), fact_kwargs)
            except Exception:  # noqa: BLE001 - not recordable; pyinfra already read it
                command = None
            ok, output = captured[-1]
            if command is not None:
                self._remember(command, executor, 0 if ok else 1, list(output.stdout_lines))
            if ok and generation == self.generation and list(output.stdout_lines) != [MISSING]:
                # Nothing changed the host since: serve this answer again until something does.
                self.answers[key] = copy.deepcopy(value)
        return value

    def run_shell_command(self, command, *args, **kwargs):
        if not self.reading:
            self._changed()  # an operation is changing the host: read live from now on
            if self.wrap is not None:
                command = self.wrap(command)
        result = self._orig_run(command, *args, **kwargs)
        if self.reading and self._capture is not None:
            self._capture.append(result)
        return result

    def put_file(self, *args, **kwargs):
        self._changed()
        return self._orig_put(*args, **kwargs)

    def _changed(self) -> None:
        self.answers.clear()
        self.generation += 1

    # -- the plan on the host ------------------------------------------------------------
    def _planned(self) -> tuple[list[tuple[str, int, str, dict, dict | None]], list[str]]:
        """([(identity, sudo, command, executor, batch)] in reading order, [facts left out]);
        batch: the fact's Call spec when the plan's one python3 answers it (a fact with a
        `call` method, watchme/fact_batch.py, read as root), else None.

        A run that changed the host also keeps the facts of the plan it was served but did
        not read: it took other paths (a file it created has no checksum to read yet), and
        the next no-op, back on the no-op paths, reads them (the first no-op after a repair
        is then served all its facts). A zero-change run plans exactly what it read."""
        entries, left_out = [], []
        facts = list(self.seen.values())
        if self.generation:
            facts += [entry for key, entry in self.previous.items() if key not in self.seen]
        for module, qualname, fact_kwargs, executor in facts:
            cls = self._resolve(module, qualname)
            if cls is None or cls.shell_executable or not runnable(executor):
                left_out.append(qualname)
                continue
            try:
                fact = cls()
                command = _fact_command(fact, fact_kwargs)
                call = fact.call(**fact_kwargs) if hasattr(fact, "call") else None
            except Exception:  # noqa: BLE001 - a fact we cannot rebuild: read live next time
                left_out.append(qualname)
                continue
            identity = json.dumps({"fact": [module, qualname, fact_kwargs, executor],
                                   "sha": _sha(command)}, sort_keys=True)
            sudo = 1 if executor.get("_sudo") else 0
            # Only a call whose command is the fact's whole command (no requires_command
            # wrapper) is batched: the batch must answer exactly what that command does.
            batch = call.spec() if call is not None and sudo and call.command() == command \
                else None
            entries.append((identity, sudo, command, executor, batch))
        return entries, left_out

    def plan_text(self) -> str:
        """The plan file: exactly what this run read (facts no longer used drop out).

        First a `#J` comment: every fact as JSON, for the lock script's one-process runner
        (watchme/fact_batch.py run_plan, which also checks the memo). The rest is for a host
        without python3: the Python facts as one `B` line (one python3 for all of them, in
        the background), an `F` line per shell fact (two lanes), then `W` (the batch's
        answers). B and W are asked for with `type`, so a lock script that predates them
        runs the F lines only (the batched facts are then read live)."""
        entries, _ = self._planned()
        # each with its command too: the fact record (watchme/noop_memo.py) names it
        batched = [[identity, {**batch, "command": command}]
                   for identity, _, command, _, batch in entries if batch is not None]
        text = PLAN_HEADER + PLAN_JSON + json.dumps(
            [[identity, sudo, command, batch] for identity, sudo, command, _, batch in entries]) + "\n"
        if batched:
            # (" ; " with spaces: shlex.split gives the JSON as a word of its own)
            text += f"if type B >/dev/null 2>&1 ; then B {shlex.quote(json.dumps(batched))} ; fi\n"
        shell = [f"F {sudo} {shlex.quote(identity)} {shlex.quote(command)}\n"
                 for identity, sudo, command, _, batch in entries if batch is None]
        # Two lanes: every other shell fact in a background subshell (to a file, printed
        # after the others): the host has two cores (t4g.small) and the shell facts are
        # short processes, mostly CPU. The answers' order is no answer (noop_answers.py).
        lane, here = shell[1::2], shell[0::2]
        if lane:
            text += ("_lane=$(mktemp) ; {\n" + "".join(lane)
                     + '} > "$_lane" 2>/dev/null </dev/null &\n_lanepid=$!\n')
        text += "".join(here)
        if lane:
            text += 'wait "$_lanepid" || true ; cat "$_lane" ; rm -f "$_lane"\n'
        if batched:
            text += "if type W >/dev/null 2>&1 ; then W ; fi\n"
        return text

    def memo_blocks(self) -> tuple[list[tuple[int, str, list[str]]] | None, str]:
        """The plan this run writes, each fact with the answer this run used, as answer
        blocks for watchme/noop_answers.py; (None, why) when that is not the whole truth."""
        if self.unplanned:
            return None, f"read {self.unplanned[0]} outside the fact plan"
        if self.generation:
            return None, "a command ran on the host"
        entries, left_out = self._planned()
        if left_out:
            return None, f"the fact plan cannot hold {left_out[0]}"
        blocks = []
        for identity, _, command, executor, _ in entries:
            answer = self.record.get(json.dumps([command, executor], sort_keys=True, default=str))
            if answer is None:
                return None, f"no recorded answer for {identity}"
            blocks.append((answer["rc"], identity, list(answer["stdout"])))
        return blocks, ""

    @staticmethod
    def _resolve(module: str, qualname: str):
        try:
            obj = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            return obj if isinstance(obj, type) and issubclass(obj, FactBase) else None
        except (ImportError, AttributeError):
            return None

    def serve(self, lines: list[str]) -> None:
        """Take the answers of the planned facts from the lock command's output."""
        blocks: list[tuple[int, str, list[str]]] = []
        for line in lines:
            if line.startswith(MARK + " "):
                _, rc, identity = line.split(" ", 2)
                blocks.append((int(rc), identity, []))
            elif blocks:
                blocks[-1][2].append(line)
        for rc, identity, out in blocks:
            try:
                ident = json.loads(identity)
                module, qualname, fact_kwargs, executor = ident["fact"]
            except (ValueError, KeyError, TypeError):
                continue
            cls = self._resolve(module, qualname)
            if cls is None:
                continue
            fact = cls()
            try:
                command = _fact_command(fact, fact_kwargs)
            except Exception:  # noqa: BLE001 - arguments changed shape: read it live later
                continue
            if _sha(command) != ident.get("sha"):
                continue  # this checkout builds another command: the answer is not its own
            self._remember(command, executor, 0 if rc == 0 else 1, out)
            self.previous.setdefault(_key(cls, fact_kwargs, executor),
                                     [module, qualname, fact_kwargs, executor])
            if rc != 0 or out == [MISSING]:
                continue  # pyinfra has its own handling for these: let it read live
            try:
                value = fact.process(out) if out else fact.default()
            except Exception:  # noqa: BLE001
                continue
            self.answers[_key(cls, fact_kwargs, executor)] = value
        logger.info(f"{self.host.print_prefix}prefetched {len(self.answers)} facts "
                    "with the deploy lock")

    # -- the fact record -------------------------------------------------------------------
    def _remember(self, command: str, executor: dict, rc: int, stdout: list[str]) -> None:
        key = json.dumps([command, executor], sort_keys=True, default=str)
        self.record.pop(key, None)  # the last answer wins, in the order last read
        self.record[key] = {"command": command, "executor": executor, "rc": rc,
                            "stdout": list(stdout)}

    def save_record(self, directory: str | None = None) -> Path | None:
        directory = directory or os.environ.get("WATCHME_RECORD_DIR")
        if not directory:
            return None
        Path(directory).mkdir(parents=True, exist_ok=True)
        path = Path(directory) / f"{safe_name(self.host.name)}.facts.json"
        path.write_text(json.dumps({"version": 1, "host": self.host.name,
                                    "facts": list(self.record.values())},
                                   indent=1, default=str) + "\n")
        return path


def install(host=None, state=None) -> Prefetch | None:
    """Wrap this host's fact reads and commands (tasks/lock.py calls it before the lock)."""
    host = ctx_host.get() if host is None else host
    state = ctx_state.get() if state is None else state
    existing = getattr(host, "_watchme_prefetch", None)
    if existing or os.environ.get("WATCHME_NO_PREFETCH"):
        return existing
    p = Prefetch(state, host)
    p._orig_get_fact, p._orig_run, p._orig_put = host.get_fact, host.run_shell_command, host.put_file
    host.get_fact, host.run_shell_command, host.put_file = p.get_fact, p.run_shell_command, p.put_file
    host._watchme_prefetch = p
    atexit.register(p.save_record)
    return p
