"""watchme/prefetch.py: planned answers are exact, dropped at the first change, and recorded."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from types import SimpleNamespace

import pytest
from pyinfra.api import FactBase
from pyinfra.facts.files import Sha1File

from watchme import lock as wl
from watchme import noop_answers, prefetch


class Echo(FactBase):
    def command(self, word):
        return f"echo {word}"

    def process(self, output):
        return output[0].upper()


class FakeHost:
    name, print_prefix = "fake:22", "[fake] "
    data = SimpleNamespace(get=lambda key, default=None: "ubuntu")


def wire(p: prefetch.Prefetch, live_reads: list, commands: list) -> prefetch.Prefetch:
    """A fake pyinfra host under the wrapper: live reads run through run_shell_command."""
    p.live_reads, p.commands = live_reads, commands

    def live(cls, *args, **kwargs):
        p.live_reads.append((cls.__name__, kwargs))
        # as pyinfra does: the fact's command through host.run_shell_command, then process
        p.run_shell_command(prefetch.StringCommand(prefetch._fact_command(cls(), kwargs)))
        return f"live {kwargs}"

    def run(command, **kwargs):
        p.commands.append(command.get_raw_value())
        return True, SimpleNamespace(stdout_lines=["out"])

    p._orig_get_fact, p._orig_run, p._orig_put = live, run, lambda *a, **k: True
    return p


@pytest.fixture
def pf(monkeypatch):
    monkeypatch.setattr(prefetch, "_handle_fact_kwargs",
                        lambda state, host, cls, args, kwargs: (dict(kwargs), {"_sudo": True}))
    return wire(prefetch.Prefetch(SimpleNamespace(), FakeHost()), [], [])


def host_output(plan: str) -> list[str]:
    """Run a plan the way the lock script does on the host (the F function, as root)."""
    f = wl.SCRIPT[wl.SCRIPT.index("F() {{"):wl.SCRIPT.index("}}\nif [")].replace("{{", "{").replace("}}", "}")
    p = subprocess.run(["sh", "-c", f + "}\n" + plan], capture_output=True, text=True, check=True)
    return p.stdout.splitlines()


def replan(pf) -> prefetch.Prefetch:
    """The next run: a fresh Prefetch fed with what the host printed for the saved plan."""
    nxt = wire(prefetch.Prefetch(pf.state, pf.host), pf.live_reads, [])
    nxt.serve(host_output(pf.plan_text()))
    return nxt


def test_plan_lines_are_the_facts_own_commands_quoted(pf):
    pf.get_fact(Echo, word="a'b $(id)")
    lines = pf.plan_text().splitlines()
    assert lines[0].startswith("# watchme fact plan v1")
    assert json.loads(lines[1].removeprefix("#J ")) == [[json.loads(shlex.split(lines[2])[2]) and
                                                       shlex.split(lines[2])[2], 1,
                                                       "echo a'b $(id)", None]]
    f, sudo, identity, command = shlex.split(lines[2])
    assert (f, sudo, command) == ("F", "1", "echo a'b $(id)")
    assert json.loads(identity)["fact"] == ["tests.test_prefetch", "Echo", {"word": "a'b $(id)"},
                                            {"_sudo": True}]


def test_planned_facts_are_served_with_each_facts_own_process(pf, tmp_path):
    pf.get_fact(Echo, word="a")
    pf.get_fact(Sha1File, path=str(tmp_path / "missing"))
    nxt = replan(pf)
    pf.live_reads.clear()
    assert nxt.get_fact(Echo, word="a") == "A"
    assert nxt.get_fact(Sha1File, path=str(tmp_path / "missing")) is None
    assert pf.live_reads == [] and nxt.commands == []


def test_a_command_built_differently_is_not_served(pf):
    pf.get_fact(Echo, word="a")
    out = host_output(pf.plan_text())
    out = [re.sub(r'"sha": "\w+"', '"sha": "0000"', line) for line in out]
    nxt = replan(pf)
    nxt.answers.clear()
    nxt.serve(out)
    pf.live_reads.clear()
    assert nxt.get_fact(Echo, word="a") == "live {'word': 'a'}"


def test_a_change_drops_every_answer(pf):
    pf.get_fact(Echo, word="a")
    nxt = replan(pf)
    nxt.run_shell_command(prefetch.StringCommand("touch /etc/x"))  # an operation's command
    assert nxt.get_fact(Echo, word="a") == "live {'word': 'a'}"


def test_an_upload_drops_every_answer(pf):
    pf.get_fact(Echo, word="a")
    nxt = replan(pf)
    nxt.put_file("local", "/etc/x")
    assert nxt.get_fact(Echo, word="a") == "live {'word': 'a'}"


def test_a_live_answer_is_kept_until_the_first_change(pf):
    assert pf.get_fact(Echo, word="b") == "live {'word': 'b'}"
    assert pf.get_fact(Echo, word="b") == "live {'word': 'b'}"
    assert len(pf.live_reads) == 1
    pf.run_shell_command(prefetch.StringCommand("touch /etc/x"))
    pf.get_fact(Echo, word="b")
    assert len(pf.live_reads) == 2


def test_failed_fact_on_the_host_is_read_live(pf):
    pf.get_fact(Echo, word="a")
    nxt = wire(prefetch.Prefetch(pf.state, pf.host), pf.live_reads, [])
    identity = shlex.split(pf.plan_text().splitlines()[2])[2]
    nxt.serve([f"@@watchme-fact 1 {identity}"])
    pf.live_reads.clear()
    assert nxt.get_fact(Echo, word="a") == "live {'word': 'a'}"


def test_other_connector_arguments_stay_out_of_the_plan():
    assert prefetch.runnable({"_sudo": True, "_sudo_user": None, "_env": {}, "_shell_executable": "sh"})
    assert prefetch.runnable({"_sudo": False})
    assert not prefetch.runnable({"_sudo": True, "_sudo_user": "postgres"})
    assert not prefetch.runnable({"_sudo": False, "_env": {"A": "1"}})
    assert not prefetch.runnable({"_sudo": False, "_chdir": "/tmp"})


def test_fact_record_has_every_fact_read_batched_and_live(pf, tmp_path):
    pf.get_fact(Echo, word="a")
    nxt = replan(pf)
    nxt.get_fact(Echo, word="a")  # batched
    nxt.get_fact(Echo, word="c")  # live
    path = nxt.save_record(str(tmp_path))
    assert path.name == "fake_22.facts.json"
    rec = json.loads(path.read_text())
    assert rec["version"] == 1 and rec["host"] == "fake:22"
    assert {"command": "echo a", "executor": {"_sudo": True}, "rc": 0, "stdout": ["a"]} in rec["facts"]
    assert {"command": "echo c", "executor": {"_sudo": True}, "rc": 0, "stdout": ["out"]} in rec["facts"]


# The no-op memo's answers (watchme/noop_answers.py) ----------------------------------------

def _host_hash(plan: str, commit: str = "c") -> str:
    from watchme import noop_answers
    text = "\n".join(host_output(plan)) + "\n"
    return noop_answers.answers_hash(noop_answers.blocks_from_output(text), commit)


def test_memo_answers_hash_as_the_host_check_does(pf, tmp_path):
    from watchme import noop_answers
    pf.get_fact(Echo, word="a b")
    pf.get_fact(Sha1File, path=str(tmp_path / "missing"))
    nxt = replan(pf)
    nxt.get_fact(Echo, word="a b")
    nxt.get_fact(Sha1File, path=str(tmp_path / "missing"))
    blocks, why = nxt.memo_blocks()
    assert why == "" and len(blocks) == 2
    assert noop_answers.answers_hash(blocks, "c") == _host_hash(nxt.plan_text())
    (tmp_path / "missing").write_text("now here")  # the host changed: the hash follows
    assert noop_answers.answers_hash(blocks, "c") != _host_hash(nxt.plan_text())


def test_no_memo_answers_after_a_change_or_an_unplanned_read(pf):
    pf.get_fact(Echo, word="a")
    nxt = replan(pf)
    nxt.get_fact(Echo, word="a")
    nxt.run_shell_command(prefetch.StringCommand("touch /etc/x"))
    assert nxt.memo_blocks() == (None, "a command ran on the host")
    other = replan(pf)
    other.get_fact(Echo, word=object())  # arguments no plan can hold: read the stock way
    assert other.memo_blocks()[0] is None


def test_a_changing_run_keeps_the_served_facts_it_did_not_read(pf):
    pf.get_fact(Echo, word="a")
    pf.get_fact(Echo, word="b")
    nxt = replan(pf)
    nxt.get_fact(Echo, word="a")
    assert "echo b" not in nxt.plan_text(), "a zero-change run plans what it read"
    nxt.put_file("local", "/etc/x")
    assert "echo b" in nxt.plan_text(), "a changing run keeps what the next no-op reads"


class Printf(FactBase):
    def command(self, fmt):
        return f"printf {shlex.quote(fmt)}"

    def process(self, output):
        return list(output)


@pytest.mark.parametrize("fmt, lines", [("x\\n\\n", ["x", ""]), ("x\\n", ["x"]), ("x", ["x"]),
                                        ("", []), ("\\n", [""]), ("a\\n\\nb\\n", ["a", "", "b"])])
def test_planned_answers_keep_every_line_a_live_read_gives(pf, fmt, lines):
    """The plan keeps a fact's stdout byte for byte: trailing empty lines too (pyinfra's
    live read splits the output on newlines and keeps them)."""
    pf.get_fact(Printf, fmt=fmt)
    out = host_output(pf.plan_text())
    assert out[1:] == lines
    nxt = replan(pf)
    assert nxt.get_fact(Printf, fmt=fmt) == (lines if lines else None)


def test_memo_answers_hash_as_the_host_check_does_with_blank_lines(pf):
    from watchme import noop_answers
    pf.get_fact(Printf, fmt="x\\n\\n")
    nxt = replan(pf)
    nxt.get_fact(Printf, fmt="x\\n\\n")
    blocks, _ = nxt.memo_blocks()
    assert blocks[0][2] == ["x", ""]
    assert noop_answers.answers_hash(blocks, "c") == _host_hash(nxt.plan_text())


def test_the_one_process_runner_answers_as_the_shell_lines(pf, tmp_path):
    """watchme/fact_batch.py run_plan (what the lock script runs when the host has python3)
    prints what the plan's shell lines print: same blocks, bytes, exit codes, order aside."""
    pf.get_fact(Echo, word="a'b $(id)")
    pf.get_fact(Sha1File, path=str(tmp_path / "missing"))
    pf.get_fact(Echo, word="two\nlines")
    plan = tmp_path / "plan.sh"
    plan.write_text(pf.plan_text())
    runner = subprocess.run([sys.executable, "-c", wl.batch_source(), "plan", str(plan)],
                            capture_output=True, text=True, check=True).stdout
    shell = host_output(pf.plan_text())
    assert sorted(noop_answers.blocks_from_output(runner)) == \
        sorted(noop_answers.blocks_from_output("\n".join(shell) + "\n"))
    assert len(noop_answers.blocks_from_output(runner)) == 3
    old = tmp_path / "old.sh"
    old.write_text("".join(l for l in pf.plan_text().splitlines(True) if not l.startswith("#J ")))
    older = subprocess.run([sys.executable, "-c", wl.batch_source(), "plan", str(old)],
                           capture_output=True, text=True)
    assert older.returncode == 3 and older.stdout == "", "a plan without JSON: the shell runs it"
