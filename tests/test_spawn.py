"""watchme/spawn.py: the little of Popen the memo check's ssh and git need, without it."""

from __future__ import annotations

import os

import pytest

from watchme.spawn import Proc


def test_input_and_both_outputs_larger_than_a_pipe_do_not_deadlock():
    p = Proc(["sh", "-c", "cat; head -c 300000 /dev/zero | tr '\\0' e >&2; exit 3"], stdin=True)
    out, err = p.communicate("k" * 300_000, timeout=20)
    assert (len(out), len(err), p.returncode) == (300_000, 300_000, 3)


def test_a_child_that_does_not_read_its_input_is_no_error():
    p = Proc(["sh", "-c", "echo done"], stdin=True)
    assert p.communicate("x" * 200_000, timeout=20) == ("done\n", "")
    assert p.returncode == 0


def test_a_child_that_takes_too_long_is_killed():
    p = Proc(["sleep", "30"])
    with pytest.raises(TimeoutError):
        p.communicate(timeout=0.3)
    assert p.returncode == -9


def test_no_such_command_is_an_oserror_and_leaves_no_descriptor():
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        Proc(["watchme-no-such-command"], stdin=True)
    assert len(os.listdir("/proc/self/fd")) == before


def test_without_stderr_the_childs_goes_nowhere_and_a_signal_is_its_exit_code():
    p = Proc(["sh", "-c", "echo out; echo err >&2; kill -TERM $$"], stderr=False)
    assert p.communicate(timeout=20) == ("out\n", "")
    assert p.returncode == -15
