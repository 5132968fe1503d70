"""Benchmark: what a no-op deploy costs on a converged test host (not a test).

    .venv/bin/python bench/noop_deploy.py [--local] [--runs 5]

Prints the median wall time of `pyinfra -y --json inventory.py deploy.py` over --runs
no-op runs, the number of remote commands one such run sends (counted from pyinfra's
--debug log), and the floor: the median time of `ssh host true`.
--local uses the host `make deploy-local` started; otherwise a fresh host is started,
converged, measured and removed. WATCHME_NO_PREFETCH=1 measures stock pyinfra fact reads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from watchme import testhost as th  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--local", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    if args.local:
        host = th.TestHost(**json.loads((th.STATE_DIR / "current.json").read_text()))
    else:
        host = th.start()
    # Keep WATCHME_NO_PREFETCH=1 (to measure stock pyinfra), drop any other target.
    env = {k: v for k, v in os.environ.items()
           if k not in ("WATCHME_HOSTS", "WATCHME_TESTHOST", "WATCHME_REGISTRY")}
    env["WATCHME_TESTHOST"] = str(Path(host.key).parent / "host.json")
    deploy = [PYINFRA, "-y", "--json", "inventory.py", "deploy.py"]
    try:
        _, p = timed(deploy, env)  # converge first
        if p.returncode != 0:
            sys.exit(f"converging deploy failed:\n{p.stderr[-2000:]}")
        walls, changed = [], 0
        for _ in range(args.runs):
            wall, p = timed(deploy, env)
            walls.append(wall)
            changed += json.loads(p.stdout)["results"]["totals"]["success"]
        _, p = timed([PYINFRA, "-y", "--debug", "inventory.py", "deploy.py"], env)
        commands = p.stderr.count("Running command on ")
        uploads = p.stderr.count("Attempting upload of ")
        floor = statistics.median(
            timed(["ssh", "-F", host.ssh_config, host.name, "true"], env)[0] for _ in range(args.runs))
        print(f"no-op deploy: median {statistics.median(walls):.2f} s over {args.runs} runs "
              f"(min {min(walls):.2f}, max {max(walls):.2f}); changed operations: {changed}")
        print(f"remote commands per no-op run: {commands} (+{uploads} uploads)")
        print(f"floor, ssh host true: median {floor:.2f} s")
    finally:
        if not args.local:
            th.stop(host.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
