"""Run one of our operations the way pyinfra's own tests do: facts in, commands or noop out."""

from __future__ import annotations

from contextlib import ExitStack
from types import SimpleNamespace

from pyinfra.context import ctx_host, ctx_state


class FakeHost:
    name = "fake"
    print_prefix = "[fake] "

    def __init__(self, facts: dict, **data):
        self.facts = facts  # fact class name -> value, or a callable(**fact_kwargs)
        self.noops: list[str] = []
        self.data = SimpleNamespace(**data)

    def get_fact(self, fact, *args, **kwargs):
        value = self.facts[fact.__name__]
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        return value(**kwargs) if callable(value) else value

    def noop(self, description: str) -> None:
        self.noops.append(description)


def run_op(op, facts: dict, *, executing: bool = True, diff: bool = False, **kwargs):
    """Returns (commands as strings or command objects, the fake host)."""
    host = FakeHost(facts)
    state = SimpleNamespace(config=SimpleNamespace(DIFF=diff), is_executing=executing)
    with ExitStack() as stack:
        stack.enter_context(ctx_host.use(host))
        stack.enter_context(ctx_state.use(state))
        commands = list(op._inner(**kwargs))
    return commands, host
