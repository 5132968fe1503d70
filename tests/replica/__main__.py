"""python -m tests.replica build|start|stop NAME (see tests/replica/__init__.py)."""

import argparse
import json
import sys
import time
from dataclasses import asdict

from tests import replica
from watchme import testhost as th


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.replica", description=replica.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build (or reuse) the replica image; prints its tag")
    sub.add_parser("start", help="start a replica host (kept until `stop`), print its state")
    sub.add_parser("stage", help="write the files the build copies into the host to a directory") \
        .add_argument("dest")
    s = sub.add_parser("stop", help="remove a replica host")
    s.add_argument("name")
    args = p.parse_args(argv)
    if args.cmd == "build":
        t0 = time.monotonic()
        print(replica.build_image())
        print(f"{time.monotonic() - t0:.0f}s", file=sys.stderr)
    elif args.cmd == "start":
        print(json.dumps(asdict(replica.start(keep=True)), indent=2))
    elif args.cmd == "stage":
        from pathlib import Path
        replica.stage(Path(args.dest))
    elif args.cmd == "stop":
        th.stop(args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
