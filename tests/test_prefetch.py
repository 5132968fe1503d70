"""watchme/prefetch.py: batched answers are exact, and are dropped at the first change."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pyinfra.api import FactBase
from pyinfra.facts.files import Sha1File

from watchme import prefetch


class Echo(FactBase):
    def command(self, word):
        return f"echo {word}"

    def process(self, output):
        return output[0].upper()


class FakeHost:
    name, print_prefix = "fake:22", "[fake] "
    data = SimpleNamespace(get=lambda key, default=None: "ubuntu")


@pytest.fixture
def pf(monkeypatch, tmp_path):
    monkeypatch.setattr(prefetch, "PLAN_DIR", tmp_path)
    monkeypatch.setattr(prefetch, "_handle_fact_kwargs",
                        lambda state, host, cls, args, kwargs: (dict(kwargs), {"_sudo": True}))
    p = prefetch.Prefetch(SimpleNamespace(), FakeHost())
    p.live_reads, p.commands = [], []

    def live(cls, *args, **kwargs):
        p.live_reads.append((cls.__name__, kwargs))
        return f"live {kwargs}"

    def run(command, **kwargs):
        p.commands.append(command.get_raw_value())
        lines = p.batch_output if p.reading else []  # only the batch prints facts
        return True, SimpleNamespace(stdout_lines=lines)

    p._orig_get_fact, p._orig_run, p._orig_put = live, run, lambda *a, **k: True
    return p


def test_first_run_reads_live_and_records_the_plan(pf):
    assert pf.get_fact(Echo, word="a") == "live {'word': 'a'}"
    pf.save_plan()
    assert pf.load_plan() == [["tests.test_prefetch", "Echo", {"word": "a"}, {"_sudo": True}]]


def test_planned_facts_come_from_one_command_with_each_facts_own_process(pf):
    pf.get_fact(Echo, word="a")
    pf.get_fact(Sha1File, path="/etc/x")
    pf.save_plan()
    pf.batch_output = ["@@watchme-fact 0 0", "a", "@@watchme-fact 1 0",
                       "0123456789abcdef0123456789abcdef01234567  /etc/x"]
    pf.live_reads.clear()
    pf.prefetch()
    assert len(pf.commands) == 1 and "echo a" in pf.commands[0] and "sha1sum" in pf.commands[0]
    assert pf.get_fact(Echo, word="a") == "A"
    assert pf.get_fact(Sha1File, path="/etc/x") == "0123456789abcdef0123456789abcdef01234567"
    assert pf.live_reads == []


def test_a_change_drops_every_answer(pf):
    pf.get_fact(Echo, word="a")
    pf.save_plan()
    pf.batch_output = ["@@watchme-fact 0 0", "a"]
    pf.prefetch()
    pf.run_shell_command(prefetch.StringCommand("touch /etc/x"))  # an operation's command
    assert pf.get_fact(Echo, word="a") == "live {'word': 'a'}"


def test_an_upload_drops_every_answer(pf):
    pf.get_fact(Echo, word="a")
    pf.save_plan()
    pf.batch_output = ["@@watchme-fact 0 0", "a"]
    pf.prefetch()
    pf.put_file("local", "/etc/x")
    assert pf.get_fact(Echo, word="a") == "live {'word': 'a'}"


def test_failed_fact_in_the_batch_is_read_live(pf):
    pf.get_fact(Echo, word="a")
    pf.save_plan()
    pf.batch_output = ["@@watchme-fact 0 1"]
    pf.prefetch()
    assert pf.get_fact(Echo, word="a") == "live {'word': 'a'}"


def test_unplanned_fact_is_read_live(pf):
    pf.batch_output = []
    pf.prefetch()
    assert pf.get_fact(Echo, word="b") == "live {'word': 'b'}"
