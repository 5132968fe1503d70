"""One way to run a remote command from inside an operation (a FunctionCommand's body).

pyinfra gives a FunctionCommand the state and host but not the operation's connector
arguments; a command sent with `host.run_shell_command(cmd)` alone would drop `_sudo`,
`_sudo_user`, `_env` and the rest that the operation (or group_data) asked for. This reads
them from the executing operation, so a command runs exactly as the operation's own
commands do.
"""

from __future__ import annotations

from pyinfra.api import StringCommand
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS


def connector_arguments(state, host) -> dict:
    """The executing operation's connector arguments (sudo, user, env, ...)."""
    op_hash = getattr(host, "executing_op_hash", None)
    if op_hash is None:
        return {}
    op_data = state.get_op_data_for_host(host, op_hash)
    return {k: v for k, v in op_data.global_arguments.items() if k in CONNECTOR_ARGUMENT_KEYS}


def run(state, host, command, **override) -> tuple[bool, list[str], list[str]]:
    """(success, stdout lines, stderr lines) of command, with the operation's arguments."""
    kwargs = {**connector_arguments(state, host), **override}
    if isinstance(command, str):
        command = StringCommand(command)
    ok, output = host.run_shell_command(command, **kwargs)
    return ok, list(output.stdout_lines), list(output.stderr_lines)
