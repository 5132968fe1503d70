"""Peak memory of a no-op's work on a host: bench/monitor_memory.sh with the plan runner.

    .venv/bin/python bench/noop_memory.py [SSH DESTINATION ARGS...]

Runs bench/monitor_memory.sh as root on the host (default: the local test host,
`python -m watchme.testhost ssh`) with watchme/fact_batch.py's text in $BATCH, so that it
also measures the plan's Python facts in one python3 (B), the whole plan in one python3
(run_plan, what a no-op's lock command runs) and the same with the memo's verdict (what
`watchme deploy`'s memo check runs). Prints its table. Not a test.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from watchme import lock as wl  # noqa: E402


def main(argv: list[str]) -> int:
    ssh = argv or shlex.split(subprocess.run(
        [sys.executable, "-m", "watchme.testhost", "ssh"], cwd=ROOT, capture_output=True,
        text=True, check=True).stdout.strip())
    check = (ROOT / "watchme" / "noop_answers.py").read_text()
    script = (f"BATCH={shlex.quote(wl.batch_source())}\nexport BATCH\n"
              f"CHECK={shlex.quote(check)}\n"
              + (ROOT / "bench" / "monitor_memory.sh").read_text())
    return subprocess.run([*ssh, "sudo sh -s -- 5 /opt/watchme/scripts "
                           "/var/lib/watchme/fact-plan.sh 40"], input=script, text=True).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
