"""watchme/fact_batch.py: the one-process plan runner answers exactly as the shell does.

Local and real: the runner's text as the lock command sends it (`python3 -c TEXT plan
PATH`) against the plan's own shell lines (the lock script's F, B and W functions) and
against each fact's own command, over real processes: exit codes, output without a final
newline, 100 KB of output, a script that exits, one that raises, stderr into the answer,
a missing script with and without another branch. Repeated, since the runner's scheduling
(SIGCHLD, two at a time) is where a lost child would show. The same comparison on a real
converged host: tests/test_noop_memo.py.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from watchme import lock as wl
from watchme import noop_answers
from watchme.fact_batch import PLAN_JSON, Call

SHELL = ["true", "echo x", "sleep 0.02; echo slow", "printf 'no newline'", "exit 3",
         "head -c 100000 /dev/zero | tr '\\0' z", "echo out; echo err >&2", "printf '\\n\\n'",
         "echo $(( 6 * 7 ))", "cat; echo stdin-closed"]


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "check.py"
    path.write_text("import sys\nprint('args', sys.argv[1:])\nprint('to stderr', file=sys.stderr)\n"
                    "sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)\n")
    return str(path)


def _calls(script: str, tmp_path) -> list[Call]:
    raises = tmp_path / "raises.py"
    raises.write_text("print('before')\nraise RuntimeError('boom')\n")
    return [
        Call(script=script, argv=["0"], tolerant=True),
        Call(script=script, argv=["2"], tolerant=True),
        Call(script=script, argv=["1"], merge=True, exit_line=True),  # NetworkReport's shape
        Call(script=script, argv=["5"]),
        Call(script=str(raises), argv=[], merge=True, exit_line=True),
        Call(code="import sys, json\nprint(json.dumps(sys.argv[1:]))", argv=["a b", "$(id)"]),
        Call(code="raise SystemExit('a message')"),
        Call(script=str(tmp_path / "missing.py"), argv=["x"], tolerant=True),
        Call(script=str(tmp_path / "missing.py"), argv=["y"], fallback="echo the other branch"),
    ]


def _plan(tmp_path, script: str) -> tuple[str, list]:
    entries = [[json.dumps({"fact": ["shell", str(i)], "sha": str(i)}), 1, cmd, None]
               for i, cmd in enumerate(SHELL)]
    for i, call in enumerate(_calls(script, tmp_path)):
        entries.append([json.dumps({"fact": ["py", str(i)], "sha": f"p{i}"}), 1, call.command(),
                        call.spec()])
    # the plan's shell lines, as watchme/prefetch.py writes them for a host without python3
    batched = [[i, {**spec, "command": cmd}] for i, _, cmd, spec in entries if spec]
    text = "# plan\n" + PLAN_JSON + json.dumps(entries) + "\n"
    text += f"if type B >/dev/null 2>&1 ; then B {shlex.quote(json.dumps(batched))} ; fi\n"
    text += "".join(f"F 1 {shlex.quote(i)} {shlex.quote(c)}\n" for i, _, c, s in entries if not s)
    text += "if type W >/dev/null 2>&1 ; then W ; fi\n"
    return text, entries


def _functions(tmp_path) -> str:
    start = wl.SCRIPT.index("F() {{")
    return wl.SCRIPT[start:wl.SCRIPT.index('if [ "$p" -le 1 ]')].format(lock_dir=str(tmp_path))


def _blocks(text: str) -> dict[str, tuple[int, list[str]]]:
    return {identity: (rc, lines) for rc, identity, lines in noop_answers.blocks_from_output(text)}


def _raw(text: str) -> dict[str, str]:
    """identity -> '<rc>\\n<output>' exactly as printed (exit codes as printed, not 0/1)."""
    out = {}
    for part in text.split("@@watchme-fact ")[1:]:
        head, _, body = part.partition("\n")
        rc, identity = head.split(" ", 1)
        out[identity] = f"{rc}\n{body}"
    return out


def test_the_runner_answers_each_fact_as_its_own_command_and_as_the_shell_lines(tmp_path, script):
    text, entries = _plan(tmp_path, script)
    plan = tmp_path / "plan.sh"
    plan.write_text(text)
    runner = subprocess.run([sys.executable, "-c", wl.batch_source(), "plan", str(plan)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert runner.returncode == 0, runner.stderr
    # each fact's own command under the F function: what pyinfra reads live, as root
    live = subprocess.run(["sh", "-c", _functions(tmp_path) + "\n" + "".join(
        f"F 1 {shlex.quote(i)} {shlex.quote(c)}\n" for i, _, c, _ in entries)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert _raw(runner.stdout) == _raw(live.stdout)
    assert len(_raw(runner.stdout)) == len(entries)
    # the plan's shell lines (F in two lanes, the Python facts through B and W)
    shell = subprocess.run(["sh", "-c", f"BATCH={shlex.quote(wl.batch_source())}\n"
                            + _functions(tmp_path) + "\n. " + str(plan)],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    by_shell = _raw(shell.stdout)
    missing_with_fallback = entries[-1][0]
    assert missing_with_fallback not in by_shell, "B answers no fact whose script is missing"
    assert {k: v for k, v in _raw(runner.stdout).items() if k != missing_with_fallback} == by_shell
    answers = _blocks(runner.stdout)
    assert answers[json.dumps({"fact": ["py", "2"], "sha": "p2"})][1][-1] == "@@exit=1"
    assert answers[json.dumps({"fact": ["py", "8"], "sha": "p8"})] == (0, ["the other branch"])


def test_the_runner_loses_no_child_over_many_runs(tmp_path, script):
    """Two at a time, reaped on SIGCHLD while a Python fact runs: every fact answers, every
    time (a child reaped before the runner knew it once left a fact unanswered)."""
    text, entries = _plan(tmp_path, script)
    plan = tmp_path / "plan.sh"
    plan.write_text(text)
    first = None
    for _ in range(15):
        out = subprocess.run([sys.executable, "-c", wl.batch_source(), "plan", str(plan)],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path).stdout
        first = first or _raw(out)
        assert _raw(out) == first and len(first) == len(entries)


def test_a_plan_without_its_json_line_is_left_to_the_shell(tmp_path):
    plan = tmp_path / "old.sh"
    plan.write_text("# an older plan\nF 1 '{}' 'echo a'\n")
    p = subprocess.run([sys.executable, "-c", wl.batch_source(), "plan", str(plan)],
                       capture_output=True, text=True)
    assert p.returncode == 3 and p.stdout == ""


def test_slowest_first_from_the_last_runs_times(tmp_path):
    """The runner records each shell fact's time and starts the slowest first next time."""
    from watchme import fact_batch
    entries = [[json.dumps({"fact": ["f", str(i)], "sha": f"s{i}"}), 1, cmd, None]
               for i, cmd in enumerate(["echo fast", "sleep 0.3; echo slow", "echo fast2"])]
    plan = tmp_path / "plan.sh"
    plan.write_text("# p\n" + PLAN_JSON + json.dumps(entries) + "\n")
    times = tmp_path / "times.json"
    fact_batch.run_plan(str(plan), times_path=str(times))
    took = json.loads(times.read_text())
    slow = entries[1][0][-40:]
    assert max(took, key=took.get) == slow and took[slow] >= 300


def test_a_shell_fact_gets_sigpipe_back_as_under_the_shell(tmp_path):
    """Python ignores SIGPIPE; a fact must not inherit that (under sh, SIGPIPE ends a
    process: what ends `cmd` in `cmd | head -n1`)."""
    entries = [[json.dumps({"fact": ["pipe"], "sha": "1"}), 1,
                "echo before; kill -PIPE $$; echo survived", None]]
    plan = tmp_path / "plan.sh"
    plan.write_text("# p\n" + PLAN_JSON + json.dumps(entries) + "\n")
    out = subprocess.run([sys.executable, "-c", wl.batch_source(), "plan", str(plan)],
                         capture_output=True, text=True, timeout=20)
    assert out.stdout.splitlines() == [f"@@watchme-fact {128 + 13} {entries[0][0]}", "before"]


def test_the_memo_key_on_stdin_is_read_after_the_plan_and_no_fact_sees_it(tmp_path, script):
    """KEY=- (watchme/noop_memo.py): the inputs key is the runner's stdin, sent while ssh
    connects; the verdict uses it, and a Python fact run in-process reads an empty stdin,
    as its own command does under F (</dev/null)."""
    text, entries = _plan(tmp_path, script)
    text = text.replace(PLAN_JSON + "[", PLAN_JSON + json.dumps([[
        json.dumps({"fact": ["py", "stdin"], "sha": "s"}), 1, "true",
        Call(code="import sys\nprint(repr(sys.stdin.read()))").spec()]])[:-1] + ", ", 1)
    plan = tmp_path / "plan.sh"
    plan.write_text(text)
    first = subprocess.run([sys.executable, "-S", "-c", wl.batch_source(), "plan", str(plan)],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path).stdout
    blocks = noop_answers.blocks_from_output(first)
    assert _blocks(first)[json.dumps({"fact": ["py", "stdin"], "sha": "s"})] == (0, ["''"])
    record = tmp_path / "record"
    record.write_text(json.dumps({"commit": "abc"}) + "\n")
    memo = tmp_path / "memo"
    memo.write_text(json.dumps({"key": "k1", "answers": noop_answers.answers_hash(blocks, "abc"),
                                "operations": [], "warnings": []}))
    check = (ROOT / "watchme" / "noop_answers.py").read_text()
    verdicts = {}
    for key in ("k1", "k2"):
        out = tmp_path / f"verdict-{key}"
        p = subprocess.run([sys.executable, "-S", "-c", wl.batch_source(), "plan", str(plan),
                            "--check", wl.packed_python(check), str(memo), str(record), "-",
                            str(out)], input=key + "\n", capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        verdicts[key] = out.read_text()
    assert verdicts["k1"].startswith("memo=hit "), verdicts["k1"]
    assert verdicts["k2"].startswith("memo=miss the inputs differ"), verdicts["k2"]


# -- the plan read without json's module (re, enum: ~15 ms on the host before any fact) ---

from hypothesis import given, strategies as st  # noqa: E402

from watchme.fact_batch import _loads  # noqa: E402

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text()
                    | st.floats(allow_nan=False, allow_infinity=False),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                    max_leaves=20)


@given(JSON, st.sampled_from(["", " ", "\n", "\t\r\n "]))
def test_the_plan_reader_reads_what_json_reads(value, pad):
    text = pad + json.dumps(value, ensure_ascii=False) + pad
    assert _loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", "  ", "[1,", '{"a": 1} x', "[1] [2]", "{'a': 1}", "nul"])
def test_the_plan_reader_refuses_what_json_refuses(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        _loads(text)


def test_the_runner_starts_its_facts_before_json_re_or_enum(tmp_path):
    """The shell facts start before the imports only the Python facts need."""
    probe = ("import sys, os\n"
             f"sys.path.insert(0, {str(ROOT)!r})\n"
             "import watchme.fact_batch as fb\n"
             "real = os.posix_spawnp\n"
             "def spawn(*a, **k):\n"
             "    print(' '.join(m for m in ('json', 're', 'enum', 'signal', 'shlex') if m in sys.modules))\n"
             "    os._exit(0)\n"
             "os.posix_spawnp = spawn\n"
             "fb.run_plan(sys.argv[1], times_path='')\n")
    plan = tmp_path / "fact-plan.sh"
    plan.write_text("#J " + json.dumps([["id", 1, "true", None]]) + "\n")
    p = subprocess.run([sys.executable, "-S", "-c", probe, str(plan)], capture_output=True,
                       text=True)
    assert p.returncode == 0 and p.stdout == "\n", p.stdout + p.stderr
