"""THE fake host for unit-testing operations the way pyinfra's own tests do: facts in,
commands (or a noop) out. Every operation test uses this one; no other fake host.

    commands, host = run_op(op, {Link: {"link_target": "/x"}}, path="/p", target="/x")

facts: keyed by the fact class or its name; a value, or a callable(**fact_kwargs) for facts
asked with arguments (Link per path). state: what the operation reads as pyinfra's State
(host.state and ctx_state), e.g. is_executing and the other operations' meta.
"""

from __future__ import annotations

from contextlib import ExitStack
from types import SimpleNamespace

from pyinfra.api import StringCommand
from pyinfra.context import ctx_host, ctx_state


class FakeData(SimpleNamespace):
    def get(self, key, default=None):
        return getattr(self, key, default)


class FakeHost:
    name = "fake"
    print_prefix = "[fake] "

    def __init__(self, facts: dict, data: dict | None = None):
        self.facts = {(k if isinstance(k, str) else k.__name__): v for k, v in facts.items()}
        self.noops: list[str] = []
        self.asked: list[tuple[str, dict]] = []
        self.data = FakeData(**(data or {}))

    def get_fact(self, fact, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        self.asked.append((fact.__name__, kwargs))
        value = self.facts[fact.__name__]
        return value(**kwargs) if callable(value) else value

    def noop(self, description: str) -> None:
        self.noops.append(description)


def run_op(op, facts: dict, *, executing: bool = True, diff: bool = False,
           data: dict | None = None, state=None, **kwargs):
    """(the commands the operation yields, the fake host)."""
    host = FakeHost(facts, data)
    if state is None:
        state = SimpleNamespace(config=SimpleNamespace(DIFF=diff), is_executing=executing)
    host.state = state
    host.current_op_hash = "current"
    with ExitStack() as stack:
        stack.enter_context(ctx_host.use(host))
        stack.enter_context(ctx_state.use(state))
        commands = list(op._inner(**kwargs))
    return commands, host


def text(commands) -> list:
    """Shell commands as the text pyinfra would run (other command objects unchanged)."""
    out = []
    for c in commands:
        if isinstance(c, StringCommand):
            out.append(c.get_raw_value())
        else:
            out.append(c)
    return out
