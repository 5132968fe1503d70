"""Read-only commands over the deploy's own inventory and group data (doctor, import).

`watchme doctor` and `watchme import` must see exactly what a deploy sees: the same
targets (inventory.py, WATCHME_* variables), the same group_data (all.py, per-group
files, the registry) and the same `--data key=value` overrides, the same connector
settings (strict host keys, sudo). So they load the inventory through pyinfra's own
loader, connect through pyinfra, and read facts; they never run an operation.

    results = inspect.facts(SomeFact, data={"network_name": "x"}, arg=1)
    for name, (host, value) in results.items(): ...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class NoCheckout(ValueError):
    """Neither the current directory nor the package's parent holds deploy.py/inventory.py."""


def root() -> Path:
    """The checkout whose inventory.py and group_data/ a command reads: the current directory
    first (a non-editable `pipx install .` has no checkout beside the package), as
    `watchme deploy` finds it."""
    from watchme.deploy import checkout

    found = checkout()
    if found is None:
        raise NoCheckout("no deploy.py and inventory.py here; fix: cd into the "
                         "watchme-server-configs checkout and run it again")
    return found


def parse_data(pairs: list[str] | None) -> dict[str, Any]:
    """`--data key=value` pairs as pyinfra's CLI parses them (JSON-ish values)."""
    from pyinfra_cli.util import parse_cli_arg

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--data {pair!r}: expected key=value")
        out[key] = parse_cli_arg(value)
    return out


def connect(data: dict[str, Any] | None = None):
    """A pyinfra State for inventory.py with group_data and overrides, connected.

    Set up the way pyinfra's own CLI does it (pyinfra_cli/cli.py): the state and config in
    context before the inventory file runs (it needs them), then init, then connect.
    Returns (state, failed): failed maps host name -> why it could not be reached.
    """
    from pyinfra.api import Config, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.state import StateStage
    from pyinfra.context import ctx_config, ctx_inventory, ctx_state
    from pyinfra_cli.inventory import make_inventory

    ROOT = root()
    state = State(check_for_changes=False)
    state.cwd = str(ROOT)
    config = Config(FAIL_PERCENT=100)
    ctx_state.set(state)
    ctx_config.set(config)
    cwd = os.getcwd()
    os.chdir(ROOT)  # group_data/ and inventory.py resolve relative to the project
    try:
        inventory = make_inventory(str(ROOT / "inventory.py"), override_data=data or {},
                                   cwd=str(ROOT))
        ctx_inventory.set(inventory)
        state.init(inventory, config)
        state.set_stage(StateStage.Connect)
        connect_all(state)
    finally:
        os.chdir(cwd)
    active = {h.name for h in state.inventory.get_active_hosts()}
    failed = {h.name: "could not connect (see the log above)" for h in inventory
              if h.name not in active}
    return state, failed


def facts(cls, data: dict[str, Any] | None = None, state=None, **fact_kwargs):
    """{host name: (host, value)} of one fact on every reachable host; None value on error.

    fact_kwargs may be a callable(host) -> kwargs, for facts whose arguments come from
    the host's own data (e.g. its registry).
    """
    from pyinfra.api.facts import get_fact
    from pyinfra.context import ctx_host, ctx_state

    if state is None:
        state, _ = connect(data)
    out = {}
    for host in state.inventory.get_active_hosts():
        kwargs = fact_kwargs.get("per_host")(host) if callable(fact_kwargs.get("per_host")) \
            else fact_kwargs
        with ctx_state.use(state), ctx_host.use(host):
            try:
                value = get_fact(state, host, cls, kwargs=kwargs, apply_failed_hosts=False)
            except Exception as e:  # noqa: BLE001 - reported per host, never hides another
                value = e
        out[host.name] = (host, value)
    return out
