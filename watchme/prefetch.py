"""Read every fact of a deploy in one remote command, keeping pyinfra's stock operations.

pyinfra 3 runs one remote command per fact it reads (it keeps no fact cache), so a no-op
deploy of ~70 stock operations costs ~200 SSH round trips. This records which facts a run
read (class, arguments, sudo/user settings) in a small local plan file per target, and on
the next run executes all of them in one shell script, each fact's own command and its own
`process()`, so operations read exactly what they would have read one by one.

The answers are served only while nothing has changed the host: the first command or
upload that an operation executes on the host drops them all, and from then on every fact
is read live again, as stock pyinfra does. A no-op deploy therefore costs one round trip
for its facts; a deploy that changes things is never served a stale answer. A fact that
failed, or one the plan does not know yet, is read the stock way.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import importlib
import json
import os
from pathlib import Path

from pyinfra import logger
from pyinfra.api import FactBase, ShortFactBase, StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
# Private helpers of pyinfra 3.10 (pinned): we must build the very command pyinfra would.
from pyinfra.api.facts import _MISSING_COMMAND_MARKER as MISSING, _handle_fact_kwargs, _make_command
from pyinfra.context import ctx_host, ctx_state

PLAN_DIR = Path(os.environ.get("WATCHME_CACHE_DIR", Path.home() / ".cache" / "watchme")) / "fact-plans"
MARK = "@@watchme-fact"


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
        raw = f"if command -v {requires} >/dev/null 2>&1; then ({raw}); else echo '{MISSING}'; fi"
    return raw


class Prefetch:
    def __init__(self, state, host):
        self.state, self.host = state, host
        self.plan_file = PLAN_DIR / (hashlib.sha256(
            f"{host.name}|{host.data.get('ssh_user')}".encode()).hexdigest()[:16] + ".json")
        self.answers: dict[str, object] = {}
        self.seen: dict[str, list] = {}
        self.reading = 0  # >0 while pyinfra runs a fact command (not a change)
        self.served = 0

    # -- the three host methods we wrap ----------------------------------------------------
    def get_fact(self, cls, *args, **kwargs):
        if not isinstance(cls, type) or issubclass(cls, ShortFactBase) or not issubclass(cls, FactBase):
            return self._orig_get_fact(cls, *args, **kwargs)
        fact_kwargs, global_kwargs = _handle_fact_kwargs(self.state, self.host, cls, args, kwargs)
        fact_kwargs = {k: v for k, v in fact_kwargs.items() if k != "self"}  # getcallargs adds it
        executor = {k: v for k, v in global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS}
        try:
            key = _key(cls, fact_kwargs, executor)
            entry = [cls.__module__, cls.__qualname__, json.loads(json.dumps(fact_kwargs)), executor]
            json.dumps(entry)
        except (TypeError, ValueError):
            return self._orig_get_fact(cls, *args, **kwargs)  # arguments we cannot record
        self.seen.setdefault(key, entry)
        if key in self.answers:
            self.served += 1
            return copy.deepcopy(self.answers[key])  # operations may modify what they read
        self.reading += 1
        try:
            value = self._orig_get_fact(cls, *args, **kwargs)
        finally:
            self.reading -= 1
        return value

    def run_shell_command(self, *args, **kwargs):
        if not self.reading:
            self.answers.clear()  # an operation is changing the host: read live from now on
        return self._orig_run(*args, **kwargs)

    def put_file(self, *args, **kwargs):
        self.answers.clear()
        return self._orig_put(*args, **kwargs)

    # -- plan ----------------------------------------------------------------------------
    def load_plan(self) -> list[list]:
        try:
            return json.loads(self.plan_file.read_text())
        except (OSError, ValueError):
            return []

    def save_plan(self) -> None:
        """The plan is exactly what this run read: facts no longer used drop out."""
        if self.seen:
            PLAN_DIR.mkdir(parents=True, exist_ok=True)
            self.plan_file.write_text(json.dumps(list(self.seen.values())))

    @staticmethod
    def _resolve(module: str, qualname: str):
        try:
            obj = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            return obj if isinstance(obj, type) and issubclass(obj, FactBase) else None
        except (ImportError, AttributeError):
            return None

    def prefetch(self) -> None:
        """Run every planned fact that shares the most common sudo/user settings, at once."""
        groups: dict[str, list] = {}
        for module, qualname, fact_kwargs, executor in self.load_plan():
            cls = self._resolve(module, qualname)
            if cls:
                groups.setdefault(json.dumps(executor, sort_keys=True), []).append(
                    (cls, fact_kwargs, executor))
        for entries in groups.values():
            self._run_batch(entries)

    def _run_batch(self, entries) -> None:
        executor = dict(entries[0][2])
        parts, facts = [], {}
        for i, (cls, fact_kwargs, _) in enumerate(entries):
            try:
                facts[i] = cls()
                command = _fact_command(facts[i], fact_kwargs)
            except Exception:  # a fact whose arguments changed shape: read it live later
                continue
            parts.append(f"out=$( ({command}) </dev/null 2>/dev/null ); rc=$?; "
                         f"echo '{MARK} {i}' $rc; [ -n \"$out\" ] && printf '%s\\n' \"$out\"")
        if not parts:
            return
        script = "\n".join(parts)  # pyinfra wraps it in sudo + sh -c itself
        self.reading += 1
        try:
            ok, output = self._orig_run(StringCommand(script), **executor)
        finally:
            self.reading -= 1
        if not ok:
            return
        blocks: dict[int, tuple[int, list[str]]] = {}
        current = None
        for line in output.stdout_lines:
            if line.startswith(MARK + " "):
                _, index, rc = line.split(" ")
                current = int(index)
                blocks[current] = (int(rc), [])
            elif current is not None:
                blocks[current][1].append(line)
        for i, (rc, lines) in blocks.items():
            cls, fact_kwargs, _ = entries[i]
            if rc != 0 or lines == [MISSING]:
                continue  # pyinfra has its own handling for these: let it read live
            fact = facts[i]
            try:
                value = fact.process(lines) if lines else fact.default()
            except Exception:
                continue
            self.answers[_key(cls, fact_kwargs, executor)] = value
        logger.debug(f"{self.host.print_prefix}prefetched {len(self.answers)} facts in one command")


def install() -> None:
    """Wrap the current host's fact reads and commands; prefetch last run's facts."""
    host, state = ctx_host.get(), ctx_state.get()
    if getattr(host, "_watchme_prefetch", None) or os.environ.get("WATCHME_NO_PREFETCH"):
        return
    p = Prefetch(state, host)
    p._orig_get_fact, p._orig_run, p._orig_put = host.get_fact, host.run_shell_command, host.put_file
    host.get_fact, host.run_shell_command, host.put_file = p.get_fact, p.run_shell_command, p.put_file
    host._watchme_prefetch = p
    p.prefetch()
    atexit.register(p.save_plan)
