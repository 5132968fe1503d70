"""`watchme`: the operator's commands around the pyinfra deploy.

    watchme deploy [pyinfra options]   run deploy.py against the inventory's targets
    watchme routes                     every public route and the upstream URL it reaches
    watchme explain URL                the upstream URL nginx will request for one URL
    watchme summary [--markdown]       pyinfra --json output (stdin) as a per-host table
    watchme doctor [--json]            the runbook's checks, per service and host (read-only)
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "deploy":
        from watchme.deploy import main as run
    elif cmd == "summary":
        from watchme.summary import main as run
    elif cmd == "doctor":
        from watchme.doctor import main as run
    elif cmd in ("routes", "explain"):
        from watchme.routes import main as routes_main

        return routes_main(["list" if cmd == "routes" else "explain", *rest])
    else:
        print(f"watchme: unknown command {cmd!r}; see `watchme --help`", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
