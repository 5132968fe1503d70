"""`watchme`: the operator's commands around the pyinfra deploy.

    watchme deploy [pyinfra options]   run deploy.py against the inventory's targets
    watchme rollout NAME [--image REF] a new image for one service, health-gated, rolled back on failure
    watchme routes                     every public route and the upstream URL it reaches
    watchme explain URL                the upstream URL nginx will request for one URL
    watchme summary [--markdown]       pyinfra --json output (stdin) as a per-host table
    watchme doctor [--json]            the runbook's checks, per service and host (read-only)
    watchme import --output FILE       a registry read from the live host (read-only)
    watchme docs                       the server overview and network diagram, from the registry
    watchme unlock                     break a stale deploy lock, showing its holder

The registry is WATCHME_REGISTRY, else group_data/services.yaml (routes/explain: --registry too).
"""

from __future__ import annotations

import importlib
import sys

# command -> (module whose main(argv) runs it, arguments put before the operator's)
COMMANDS: dict[str, tuple[str, list[str]]] = {
    "deploy": ("watchme.deploy", []),
    "rollout": ("watchme.rollout", []),
    "routes": ("watchme.routes", ["list"]),
    "explain": ("watchme.routes", ["explain"]),
    "summary": ("watchme.summary", []),
    "doctor": ("watchme.doctor", []),
    "import": ("watchme.importer", []),
    "docs": ("watchme.docs", []),
    "unlock": ("watchme.unlock", []),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"watchme: unknown command {cmd!r}; see `watchme --help`", file=sys.stderr)
        return 2
    module_name, before = COMMANDS[cmd]
    try:  # imported only when used: `watchme routes` loads no pyinfra
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"watchme {cmd}: not available in this checkout ({module_name.replace('.', '/')}.py "
              "is missing); update the checkout", file=sys.stderr)
        return 2
    return module.main([*before, *rest])


if __name__ == "__main__":
    sys.exit(main())
