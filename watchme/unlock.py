"""`watchme unlock [--force] [--data key=value ...]`: show and break a host's deploy lock.

Without --force it shows each host's lock holder and breaks it only when it is stale
(its SSH session has ended and none of its remote commands still runs; see tasks/lock.py).
A live lock is refused: that deploy is still working. --force breaks it anyway (only when
you know that deploy is dead, e.g. a host whose sshd keeps a hung session alive).
`--show` only looks. The hosts are the deploy's own (inventory.py, WATCHME_* variables).
"""

from __future__ import annotations

import argparse
import sys

from watchme import lock as wl


def _describe(out: dict) -> str:
    if out.get("status") == "free":
        return "no deploy lock"
    alive = {"session": f"its SSH session (pid {out.get('holder_pid')}) is alive",
             "work": "its remote work is still running"}.get(out.get("alive"), "stale: its "
                                                          "session and remote work have ended")
    return f"locked by {wl.describe_holder(out.get('holder'))}; {alive}"


def run_on(host, mode: str, force: bool) -> dict:
    """Run the lock script on one connected pyinfra host; its key=value answer."""
    from pyinfra.api import StringCommand

    ok, output = host.run_shell_command(StringCommand(wl.opening(mode, force=force,
                                                                 facts=False)), _sudo=False)
    lines, _ = wl.split(output.stdout_lines)
    out = wl.parse(lines)
    if not ok or "status" not in out:
        out = {"status": "error", "error": "\n".join(output.stderr_lines) or "no answer"}
    return out


def connect(data: dict):
    """pyinfra's CLI order: a State in context, the inventory with group data, connect."""
    import os

    from pyinfra.api import Config, State
    from pyinfra.api.connect import connect_all
    from pyinfra.context import ctx_inventory, ctx_state
    from pyinfra_cli.inventory import make_inventory

    root = str(wl.ROOT)
    state = State(check_for_changes=False)
    state.cwd = root
    ctx_state.set(state)
    cwd = os.getcwd()
    os.chdir(root)  # group_data/ and inventory.py resolve relative to the project
    try:
        inventory = make_inventory(os.path.join(root, "inventory.py"), cwd=root,
                                   override_data=data)
        ctx_inventory.set(inventory)
        state.init(inventory, Config(FAIL_PERCENT=100))
        connect_all(state)
    finally:
        os.chdir(cwd)
    active = {h.name for h in state.inventory.get_active_hosts()}
    return state, {h.name: "could not connect (see the log above)" for h in inventory
                   if h.name not in active}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="watchme unlock", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="break a live lock too")
    ap.add_argument("--show", action="store_true", help="only show the holder")
    ap.add_argument("--data", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    from pyinfra.context import ctx_host

    from watchme import inspect

    state, failed = connect(inspect.parse_data(args.data))
    rc = 0
    for name, why in failed.items():
        print(f"{name}: {why}", file=sys.stderr)
        rc = 1
    for host in state.inventory.get_active_hosts():
        with ctx_host.use(host):
            out = run_on(host, "show" if args.show else "break", args.force)
        status = out.get("status")
        if status == "error":
            print(f"{host.name}: could not read the lock: {out['error']}", file=sys.stderr)
            rc = 1
        elif status == "no-sudo":
            print(f"{host.name}: the lock needs passwordless sudo for the login user",
                  file=sys.stderr)
            rc = 1
        elif status == "live":
            print(f"{host.name}: {_describe(out)}; not broken: that deploy is still working "
                  "(wait for it, or --force if you know it is dead)", file=sys.stderr)
            rc = 1
        elif status == "broken":
            print(f"{host.name}: broke the lock: {_describe(out)}")
        else:
            print(f"{host.name}: {_describe(out)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
