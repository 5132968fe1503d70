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
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONNECT_ERROR = re.compile(
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
    lines = []
    for line in output.splitlines():
        m = CONNECT_ERROR.match(line)
        if m:
            fix = next((f for key, f in FIXES.items() if key in m["cause"]), None)
            lines.append(f"deploy failed: {m['host']}: {m['cause']}" + (f"; fix: {fix}" if fix else ""))
    return lines


def checkout(cwd: Path | None = None) -> Path | None:
    for folder in (cwd or Path.cwd(), ROOT):
        if (folder / "deploy.py").is_file() and (folder / "inventory.py").is_file():
            return folder
    return None


def main(args: list[str]) -> int:
    root = checkout()
    if root is None:
        print("watchme deploy: no deploy.py and inventory.py here; fix: cd into the "
              "watchme-server-configs checkout and run it again", file=sys.stderr)
        return 2
    from watchme import lock
    lock.ask_commit()  # git works while the rest is imported
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
