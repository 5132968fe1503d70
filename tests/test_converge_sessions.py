"""The first converge of a fresh host in few SSH sessions (issue 13), and still correct.

Over a 100 ms link every SSH session (a remote command or an upload, pyinfra opens one
channel per each) costs a round trip or more, and a fresh host has no fact plan yet
(watchme/prefetch.py), so the first converge pays for each. Counted as bench/compare.py
counts them, from pyinfra's --debug log. Then: the second run changes nothing, and a file
changed on the host after a converge is repaired by the next run (its fact is read fresh,
never served stale).
"""

from __future__ import annotations

import pytest

from tests.conftest import assert_idempotent

# Issue 13's goal for the first converge: at most 60 sessions (443 before the bundle).
BUDGET = 60
GUARD_ENV = "/opt/watchme/monitor/guard.env"
UNIT = "/opt/watchme/systemd/watchme-infrastructure.service"
SCRIPT = "/opt/watchme/scripts/network_monitor.py"
BUNDLE_OP = "Write the rendered files (one bundle upload)"


def sessions(stderr: str) -> int:
    """Remote commands + uploads in a --debug log (bench/compare.py's count)."""
    return stderr.count("Running command on ") + stderr.count("Attempting upload of ")


@pytest.fixture(scope="module")
def first(deploy):
    run = deploy("--debug")
    assert run.rc == 0, run.stderr[-3000:]
    return run


def test_first_converge_stays_under_the_session_budget(first):
    used = sessions(first.stderr)
    assert first.stderr.count("Attempting upload of ") == 0, "files go in the bundle, not uploads"
    assert 0 < used <= BUDGET, f"first converge used {used} SSH sessions (budget {BUDGET})"


def test_first_converge_installs_the_bundle_once(first, host):
    assert any(c.startswith(BUNDLE_OP) for c in first.changed())
    assert first.stderr.count(f"Starting operation: {BUNDLE_OP}") == 1
    for path, mode in ((UNIT, 0o644), (SCRIPT, 0o755), (GUARD_ENV, 0o644)):
        f = host.file(path)
        assert f.is_file and f.user == "root" and f.group == "root" and f.mode == mode, path
    # Nothing staged beside a destination is left behind.
    assert host.run("find /opt/watchme /etc/systemd/system -name '*.watchme-new'").stdout == ""
    assert host.file("/etc/systemd/system/watchme-infrastructure.service").linked_to == UNIT
    assert host.service("watchme-infrastructure.service").is_running
    assert host.service("watchme-guard.timer").is_enabled


def test_second_run_changes_nothing(first, deploy):
    assert_idempotent(deploy)


def test_a_file_changed_after_a_converge_is_repaired(first, deploy, host):
    """Edited, chmod-ed and removed on the host after a converge: the next run sees it (the
    bundle's fact is read fresh, never an answer from before) and restores each."""
    want = {p: host.file(p).content_string for p in (GUARD_ENV, UNIT)}
    host.run(f"echo '# hand edit' >> {GUARD_ENV} && chmod 600 {SCRIPT} && rm {UNIT} "
             "&& rm /etc/systemd/system/watchme-guard.timer")
    run = deploy()
    assert run.rc == 0, run.stderr[-3000:]
    changed = run.changed()
    assert any(c.startswith(BUNDLE_OP) for c in changed)
    assert "Link the guard units into /etc/systemd/system" in changed
    # The removed unit file shows in systemd as NeedDaemonReload: the reload for that case.
    assert "Reload systemd (a unit file was never loaded)" in changed
    assert {p: host.file(p).content_string for p in want} == want
    assert host.file(SCRIPT).mode == 0o755
    assert host.file("/etc/systemd/system/watchme-guard.timer").is_symlink
    assert_idempotent(deploy)
