"""Facts answered by python3 on the host: their shell command, and one process for them all.

A no-op deploy reads seven facts that are Python on the host (the network, disk and
container checks of files/, root's Docker client config, the rollout candidates). Each
was its own `python3` process: interpreter start-up and the same imports (json, socket,
the Engine API client) seven times, ~60-90 ms of the host's CPU each, most of a no-op's
time on the host (bench/RESULTS.md). Here each such fact is described once, as a `Call`:

    Call(script="/opt/watchme/scripts/disk_guard.py", argv=["--check", ...], tolerant=True)

`Call.command()` is the fact's command, what pyinfra runs when it reads the fact live:

    if [ -f SCRIPT ] && command -v python3 >/dev/null; then python3 SCRIPT ARGV... [2>&1]
        [|| true | ; echo "@@exit=$?"]; [else FALLBACK;] fi
    python3 -c CODE ARGV...                          (a Call with code= instead of script=)

and `run()` is the same call inside one python3 process, which the fact plan runs for all
of them at once (the plan's `B` line, watchme/prefetch.py; started by the lock script,
watchme/lock.py, next to the shell facts): each script is executed as `python3 SCRIPT`
would (its text as __main__, sys.argv, sys.path[0] its directory, SystemExit as the exit
code, stdout kept, stderr kept only where the command has `2>&1`, appended after stdout),
and printed as the plan's F function prints a fact (`@@watchme-fact <rc> <identity>`, the
output byte for byte, a newline added if it lacks one). The modules the scripts import
are loaded once. A script that is not on the host answers what the command's `if` does: 
nothing (exit 0), or, when the command has a FALLBACK (another way to answer without the
script), no answer at all: pyinfra then reads that fact live with its own command.

Stdlib only; this file's text is sent with the lock command (so a host needs nothing
installed for it) and run there as `python3 -c TEXT '<json>'`. tests/test_fact_batch.py
checks on a real host that each batched answer equals the live command's, byte for byte.
"""

import io
import json
import os
import shlex
import sys

MARK = "@@watchme-fact"


class Call:
    """One host-side Python call of a fact (see the module docstring). JSON-able via spec()."""

    def __init__(self, script="", code="", argv=(), merge=False, exit_line=False,
                 tolerant=False, fallback=""):
        assert bool(script) != bool(code), "a Call runs a script or code"
        self.script, self.code, self.argv = script, code, [str(a) for a in argv]
        self.merge, self.exit_line, self.tolerant = merge, exit_line, tolerant
        self.fallback = fallback

    def spec(self):
        return {"script": self.script, "code": self.code, "argv": self.argv,
                "merge": self.merge, "exit_line": self.exit_line, "tolerant": self.tolerant,
                "fallback": bool(self.fallback)}

    def command(self):
        q = shlex.quote
        args = "".join(" " + q(a) for a in self.argv)
        if self.code:
            return "python3 -c " + q(self.code) + args
        run = "python3 " + q(self.script) + args + (" 2>&1" if self.merge else "")
        if self.exit_line:
            run += '; echo "@@exit=$?"'
        elif self.tolerant:
            run += " || true"
        tail = "; else " + self.fallback + "; fi" if self.fallback else "; fi"
        return ("if [ -f " + q(self.script) + " ] && command -v python3 >/dev/null; then "
                + run + tail)


def _exit_code(e):
    """What the interpreter makes of a SystemExit (printing a message code to stderr)."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


def run(spec):
    """(rc, output) of one call as its command would give them; None: no answer here."""
    script = spec.get("script") or ""
    if script and not os.path.isfile(script):
        return None if spec.get("fallback") else (0, "")
    out = io.StringIO()
    err = out if spec.get("merge") else io.StringIO()
    saved = sys.stdout, sys.stderr, sys.argv, sys.path[0] if sys.path else ""
    sys.stdout, sys.stderr = out, err
    sys.argv = [script or "-c", *spec.get("argv", [])]
    if sys.path:
        sys.path[0] = os.path.dirname(os.path.abspath(script)) if script else ""
    code = 0
    try:
        if script:
            with open(script, "rb") as f:
                source = f.read()
            glob = {"__name__": "__main__", "__file__": script, "__builtins__": __builtins__}
        else:
            source, glob = spec["code"], {"__name__": "__main__", "__builtins__": __builtins__}
        exec(compile(source, script or "<string>", "exec"), glob)
    except SystemExit as e:
        code = _exit_code(e)
    except BaseException:  # noqa: BLE001 - as the interpreter: traceback, exit 1
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        sys.stdout, sys.stderr, sys.argv = saved[:3]
        if sys.path:
            sys.path[0] = saved[3]
    text = out.getvalue()
    if spec.get("exit_line"):
        text += "@@exit=" + str(code) + "\n"
    # `... || true`, `...; echo`: the command's status is 0; else the interpreter's.
    rc = 0 if script and (spec.get("tolerant") or spec.get("exit_line")) else code
    return rc, text


def block(rc, identity, text):
    """A fact's answer as the plan's F function prints it."""
    head = MARK + " " + str(rc) + " " + identity + "\n"
    return head + (text if not text or text.endswith("\n") else text + "\n")


def main(argv):
    """argv[0]: JSON [[identity, spec], ...] (the plan's B line); prints each answer."""
    out = sys.stdout.buffer
    for identity, spec in json.loads(argv[0]):
        answer = run(spec)
        if answer is not None:
            out.write(block(answer[0], identity, answer[1]).encode("utf-8", "surrogateescape"))
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
