"""`watchme deploy`: pyinfra with a last line that says what went wrong, and where.

pyinfra reports a failed connection in the middle of its output and ends with "No hosts
remaining!"; an operator (or CI log) should not have to scroll for the cause. This runs
`pyinfra inventory.py deploy.py` with the given options, passes its output through, and on
failure ends with one line per failed host: the host, the cause and, where known, the fix.

First it asks the no-op memo (watchme/noop_memo.py): one ssh command per host that proves
"no change" without pyinfra when the inputs and the host's fact answers are those of a run
that changed nothing. `--full` (or WATCHME_FULL=1) skips it; a miss runs pyinfra.

It runs in the repository checkout: the current directory when it holds deploy.py and
inventory.py (a `pipx install .` / `uv tool install .` / `pip install .` copy of the CLI
has no checkout of its own), else the checkout this module was installed from (`-e`).
"""

from __future__ import annotations

import os
import sys

# (re, subprocess and pathlib are imported after git has started and where they are used:
# every millisecond before the memo check's ssh starts is one more of a no-op deploy;
# watchme/spawn.py.)
ROOT_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
CONNECT_ERROR = (
    r"^\s*\[(?P<host>[^\]]+)\]\s+(?P<cause>(?:Authentication error|Could not connect|SSH error|"
    r"SSH host key error|Could not resolve hostname|EOF error).*)$")
FIXES = {
    "Authentication error": "check WATCHME_SSH_KEY and WATCHME_SSH_USER",
    "No host key": "add the server's key to known_hosts (or WATCHME_KNOWN_HOSTS) after "
                   "checking its fingerprint",
    "does not match": "the server's host key changed: verify it before trusting it",
    "Could not connect": "is the host up and its SSH port reachable?",
    "Could not resolve": "check the host name in WATCHME_HOSTS",
}


def failure_lines(output: str) -> list[str]:
    import re
    lines = []
    for line in output.splitlines():
        m = re.match(CONNECT_ERROR, line)
        if m:
            fix = next((f for key, f in FIXES.items() if key in m["cause"]), None)
            lines.append(f"deploy failed: {m['host']}: {m['cause']}" + (f"; fix: {fix}" if fix else ""))
    return lines


def checkout_dir(cwd: str | None = None) -> str | None:
    """The checkout to run in (module docstring), as a path string."""
    for folder in (cwd or os.getcwd(), ROOT_DIR):
        if all(os.path.isfile(os.path.join(folder, f)) for f in ("deploy.py", "inventory.py")):
            return str(folder)
    return None


def checkout(cwd: Path | None = None) -> Path | None:
    from pathlib import Path
    found = checkout_dir(cwd)
    return None if found is None else Path(found)


def main(args: list[str]) -> int:
    root = checkout_dir()
    if root is None:
        print("watchme deploy: no deploy.py and inventory.py here; fix: cd into the "
              "watchme-server-configs checkout and run it again", file=sys.stderr)
        return 2
    from watchme import gitcommit
    gitcommit.ask_commit()  # git works while the rest is imported
    from watchme import noop_memo

    options = noop_memo.parse_args(args)
    env = dict(os.environ)
    rc, why = noop_memo.fast_path(options, root, env)
    if rc is not None:
        # The memo answered and nothing is left to finish (ssh and git waited for, threads
        # joined, nothing registered at exit): leave now. The interpreter's teardown of the
        # modules imported is ~18 ms of a ~0.7 s no-op. (This is the CLI's entry point; no
        # caller runs it in-process.)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    print(f"--> no-op memo: {why}; running pyinfra", file=sys.stderr)
    import subprocess
    from pathlib import Path
    pyinfra = Path(sys.executable).with_name("pyinfra")
    cmd = [str(pyinfra), *options.pyinfra_args, "inventory.py", "deploy.py"]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stderr=subprocess.PIPE, text=True)
    captured = []
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        captured.append(line)
    rc = proc.wait()
    if rc != 0:
        for line in failure_lines("".join(captured)):
            print(line, file=sys.stderr)
    return rc
