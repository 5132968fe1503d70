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

and `run()` is the same call inside one python3 process: the script's code run as
`python3 SCRIPT` would run it (as __main__, sys.argv, sys.path[0] its directory,
SystemExit as the exit code, stdout kept, stderr kept only where the command has `2>&1`,
appended after stdout), printed as the plan's F function prints a fact (`@@watchme-fact
<rc> <identity>`, the output byte for byte, a newline added if it lacks one). The modules
the scripts import are loaded once. A script that is not on the host answers what the
command's `if` does: nothing (exit 0), or its FALLBACK (the CLI) when the command has one.

The lock command (watchme/lock.py) runs the host's whole fact plan here, in one python3
(`plan PATH`, run_plan): the plan's `#J` line lists every fact (watchme/prefetch.py); the
shell facts run two at a time (the host has two cores), the slowest of the last run first,
each exactly as F runs it (`sh -c`, or runuser for a login-user fact), while this thread
answers the Python facts; in the memo check (`--check`) the same process then computes the
memo's verdict with watchme/noop_answers.py's code. One interpreter, no subshell per
fact. Without python3, or with a plan older than its `#J` line, the shell runs the plan's
own lines instead (`F` per shell fact in two lanes; `B JSON`: this file's `main` for the
Python facts, in the background).

Stdlib only; this file's text is sent with the lock command (so a host needs nothing
installed for it) and run there as `python3 -c TEXT ...`. tests/test_noop_memo.py checks
on a real host that each Python fact answers here as its own command does, byte for byte,
and that the whole plan answers here as through the shell's lines.
"""

import io
import os
import sys

# (No json, shlex or signal module at the top: on the host their imports (re, enum) are
# ~15 ms before the first shell fact could start; the plan is read with json's own C
# scanner (_loads), signals through _signal, and the Python facts import what they need
# while the shell facts already run.)

MARK = "@@watchme-fact"
# The plan's line for this runner (watchme/prefetch.py): "#J " + JSON [[identity, sudo,
# command, Call spec or null], ...]; a comment to the shell.
PLAN_JSON = "#J "
# How long each shell fact took on the last run (by the end of its identity, which holds
# the hash of its command): the slowest start first. tmpfs, root's; a hint, nothing more.
TIMES = "/run/watchme/fact-times.json"


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
        import shlex
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
    saved = sys.stdout, sys.stderr, sys.argv, sys.path[0] if sys.path else "", sys.stdin
    # stdin as the plan's F lines give a fact: empty (this process's own may hold the key)
    sys.stdout, sys.stderr, sys.stdin = out, err, io.StringIO()
    sys.argv = [script or "-c", *spec.get("argv", [])]
    if sys.path:
        sys.path[0] = os.path.dirname(os.path.abspath(script)) if script else ""
    code = 0
    try:
        glob = {"__name__": "__main__", "__builtins__": __builtins__}
        if script:
            # The script's bytecode as an import would load it (its __pycache__, written
            # next to it, kept while the file is unchanged): compiling the text each time
            # raised the process's peak by ~1 MiB (bench/noop_memory.py).
            from importlib.machinery import SourceFileLoader
            bytecode = SourceFileLoader("__main__", script).get_code("__main__")
            glob["__file__"] = script
        else:
            bytecode = compile(spec["code"], "<string>", "exec")
        exec(bytecode, glob)
    except SystemExit as e:
        code = _exit_code(e)
    except BaseException as e:  # noqa: BLE001 - as the interpreter: traceback, exit 1
        import traceback
        # from the script's own frame on, as `python3 SCRIPT` prints it (not this one's)
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        code = 1
    finally:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        sys.stdout, sys.stderr, sys.argv = saved[:3]
        sys.stdin = saved[4]
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


class _Shells:
    """The plan's shell facts as child processes, `lanes` at a time, exactly as its F
    function runs them (`sh -c` with stdin and stderr on /dev/null, or through runuser for
    a login-user fact), each one's stdout an anonymous memory file. No threads and no
    subprocess module (~1.2 MiB of this process's peak): SIGCHLD reaps a finished child and
    starts the next, in this thread, between the Python facts' bytecodes."""

    def __init__(self, entries, order, sudo_user, lanes):
        self.entries, self.todo, self.lanes = entries, list(order), lanes
        self.sudo_user = sudo_user
        self.running, self.results, self.took = {}, {}, {}
        self.busy = self.missed = False

    def _spawn(self, n):
        import _signal as signal  # (run_plan says why)
        import time
        identity, sudo, command, _ = self.entries[n]
        argv = ["sh", "-c", command]
        if not sudo and self.sudo_user and self.sudo_user != "root":
            argv = ["runuser", "-u", self.sudo_user, "--", *argv]
        fd = os.memfd_create("watchme-fact")
        # SIGCHLD waits until the child is in self.running: a child that ended at once was
        # otherwise reaped by the handler before it was known, and never answered.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            # Python ignores SIGPIPE and SIGXFSZ; the child gets them back as a shell's
            # child has them (`cmd | head -n1` ends cmd as under F), as subprocess does.
            pid = os.posix_spawnp(argv[0], argv, os.environ, setsigmask=(),
                                  setsigdef=(signal.SIGPIPE, signal.SIGXFSZ), file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)])
            self.running[pid] = (n, fd, time.monotonic())
        except OSError:
            os.close(fd)
            self.results[n] = (127, "")  # as sh says of a command it cannot run
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})

    def start(self):
        while self.todo and len(self.running) < self.lanes:
            self._spawn(self.todo.pop(0))

    def on_sigchld(self):
        """The handler: reap now, or once the reap under way ends. (Python runs a handler
        between bytecodes: also right after a waitpid in reap() returned, before that
        child was handled; reaping again there would lose it.)"""
        if self.busy:
            self.missed = True
        else:
            self.reap()

    def reap(self, block=False):
        self.busy = True
        try:
            self._reap(block)
            while self.missed:
                self.missed = False
                self._reap(False)
        finally:
            self.busy = False
        self.start()

    def _reap(self, block):
        import time
        while self.running:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:  # none left to wait for: those still listed are lost
                for n, fd, _ in self.running.values():
                    os.close(fd)
                    self.results[n] = (1, "")  # a failed fact: pyinfra reads it live
                self.running.clear()
                break
            if pid == 0:
                break
            block = False
            if pid not in self.running:
                continue
            n, fd, began = self.running.pop(pid)
            rc = (os.WEXITSTATUS(status) if os.WIFEXITED(status)
                  else 128 + os.WTERMSIG(status))  # as the shell's $?
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            os.close(fd)
            self.results[n] = (rc, b"".join(chunks).decode("utf-8", "surrogateescape"))
            self.took[self.entries[n][0][-40:]] = round((time.monotonic() - began) * 1000, 1)

    def now(self, n):
        """One fact at once, whatever runs (a Python fact's other branch: the CLI)."""
        self._spawn(n)
        while n not in self.results:
            self.reap(block=True)


def _loads(text):
    """json.loads without json's module: its decoder imports re (and enum), ~15 ms of the
    host's time before the plan's first fact could start. json's own C scanner (_json) with
    json's defaults; the json module where that is missing."""
    try:
        from _json import make_scanner
    except ImportError:
        make_scanner = None
    if make_scanner is None:
        import json
        return json.loads(text)

    class Defaults:  # what json.JSONDecoder() gives the scanner
        strict, object_hook, object_pairs_hook, memo = True, None, None, {}
        parse_float, parse_int, parse_constant = float, int, float

    ws = " \t\n\r"
    start = len(text) - len(text.lstrip(ws))
    try:
        value, end = make_scanner(Defaults())(text, start)
    except StopIteration as e:
        raise ValueError(f"no JSON value at {e.value}") from None
    if text[end:].strip(ws):
        raise ValueError(f"extra data after JSON at {end}")
    return value


def _load_times(path):
    try:
        with open(path, encoding="utf-8") as f:
            times = _loads(f.read())
        return times if isinstance(times, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_times(path, times):
    import json
    try:
        with open(path + ".new", "w", encoding="utf-8") as f:
            json.dump(times, f)
        os.replace(path + ".new", path)
    except OSError:
        pass


def run_plan(path, sudo_user="", lanes=2, times_path=TIMES):
    """The whole fact plan in this process: [(rc, identity, output)] in plan order, or None
    when the plan has no PLAN_JSON line (an older plan: the shell runs it).

    The shell facts run `lanes` at a time (_Shells, the slowest of the last run first:
    times_path), the Python facts meanwhile in this thread: one interpreter for the plan,
    no subshell per fact."""
    entries = None
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            if line.startswith(PLAN_JSON):
                entries = _loads(line[len(PLAN_JSON):])
                break
    if entries is None:
        return None
    import _signal as signal  # (signal.py imports enum: ~8 ms; the C module is all it wraps)
    before = _load_times(times_path)
    shells = _Shells(entries, sorted((n for n, e in enumerate(entries) if not e[3]),
                                     key=lambda n: -before.get(entries[n][0][-40:], 0)),
                     sudo_user, lanes)
    signal.signal(signal.SIGCHLD, lambda signum, frame: shells.on_sigchld())
    try:
        shells.start()
        for n, (_, _, _, spec) in enumerate(entries):
            if spec:
                answer = run(spec)
                if answer is None:  # no script on the host: the command's other branch
                    shells.now(n)
                else:
                    shells.results[n] = answer
        while shells.running or shells.todo:
            shells.reap(block=True)
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if times_path:
        _save_times(times_path, shells.took)
    return [(shells.results[n][0], e[0], shells.results[n][1])
            for n, e in enumerate(entries) if n in shells.results]


def check(source, memo, record, key, text):
    """The memo's verdict over the plan's output, by watchme/noop_answers.py's own code.
    key "-": the inputs key is stdin's first line (watchme/noop_memo.py sends it there
    while ssh connects; read after the plan ran, so it has long arrived)."""
    if key == "-":
        key = sys.stdin.readline().strip()
    ns = {"__name__": "noop_answers", "__builtins__": __builtins__}
    exec(compile(source, "noop_answers.py", "exec"), ns)
    return "memo=" + ns["verdict"](memo, record, key, text)


def main(argv):
    """B JSON: the Python facts of a plan's B line ([[identity, spec], ...]).
    plan PATH [--check SOURCE MEMO RECORD KEY VERDICT]: the whole plan (run_plan), printed
    at once; with --check the memo's verdict is written to VERDICT. Exit 3: no PLAN_JSON."""
    out = sys.stdout.buffer
    if argv[:1] == ["plan"]:
        answers = run_plan(argv[1], os.environ.get("SUDO_USER", ""))
        if answers is None:
            return 3
        text = "".join(block(rc, identity, output) for rc, identity, output in answers)
        del answers  # (one copy of every answer fewer while the verdict is computed)
        out.write(text.encode("utf-8", "surrogateescape"))
        out.flush()
        if argv[2:3] == ["--check"]:
            source, memo, record, key, verdict = argv[3:8]
            with open(verdict, "w", encoding="utf-8") as f:
                f.write(check(source, memo, record, key, text) + "\n")
        return 0
    for identity, spec in _loads(argv[-1]):
        answer = run(spec)
        if answer is not None:
            out.write(block(answer[0], identity, answer[1]).encode("utf-8", "surrogateescape"))
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
