"""watchme/replay.py: the pull request's preview, answered offline from recorded facts.

End to end: a real deploy converges a test host, a second (no-op) run records its facts,
the host's SSH is STOPPED (sshd and its socket: nothing answers on its port; stopping the
container would lose its published port), and `pyinfra --dry` through the replay connector then reports zero
changes for the same code and a change for a modified registry, naming what it could
not see. Unit: the record format and the inventory's refusals.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.conftest import PYINFRA, ROOT, assert_idempotent, run_deploy
from watchme import replay, summary as sm, testhost as th
from watchme.targets import TargetError, production, replay as replay_hosts

pytestmark = pytest.mark.provisioned  # e2e hosts: packages preinstalled (tests/provisioned.py)

NO_PREFETCH = {"WATCHME_NO_PREFETCH": "1"}  # each fact its own command, on both sides


def _record(path, facts, host="203.0.113.10"):
    path.write_text(json.dumps({"version": 1, "host": host, "facts": facts}))
    return path


def test_executor_defaults_do_not_matter():
    assert replay.executor_key({"_sudo": True, "_sudo_user": None, "_timeout": 30,
                                "_shell_executable": "sh", "_env": {}}) == '{"_sudo": true}'
    assert replay.executor_key({}) == replay.executor_key({"_sudo": False, "_su_user": None})
    assert replay.executor_key({"_sudo": True}) != replay.executor_key({})


def test_load_answers_by_command_and_executor(tmp_path):
    rec = replay.load(_record(tmp_path / "h.facts.json", [
        {"command": "cat /etc/x", "executor": {"_sudo": True, "_timeout": None}, "rc": 0,
         "stdout": ["a"]},
        {"command": "cat /etc/x", "executor": {}, "rc": 1, "stdout": []}]))
    assert rec["host"] == "203.0.113.10"
    assert rec["answers"][("cat /etc/x", '{"_sudo": true}')] == (0, ["a"])
    assert rec["answers"][("cat /etc/x", "{}")] == (1, [])


@pytest.mark.parametrize("text, message", [
    ("nope", "not a fact record"),
    ('{"version": 2, "host": "h", "facts": []}', "version is not 1"),
    ('{"version": 1, "facts": []}', "needs \"host\""),
    ('{"version": 1, "host": "h", "facts": [{"command": "x"}]}', "facts[0] needs command"),
])
def test_bad_record_named_with_the_fix(tmp_path, text, message):
    (tmp_path / "h.facts.json").write_text(text)
    with pytest.raises(replay.RecordError, match="fix: download the fact record") as e:
        replay.load(tmp_path / "h.facts.json")
    assert message in str(e.value)


def test_replay_inventory(tmp_path):
    _record(tmp_path / "b.facts.json", [], host="worker")
    _record(tmp_path / "a.facts.json", [], host="front")
    assert replay_hosts({"WATCHME_REPLAY_DIR": str(tmp_path)}) == [
        (f"@replay/{tmp_path / 'a.facts.json'}", {"placement_name": "front", "front": True}),
        (f"@replay/{tmp_path / 'b.facts.json'}", {"placement_name": "worker", "front": False})]
    with pytest.raises(TargetError, match="no \\*.facts.json"):
        replay_hosts({"WATCHME_REPLAY_DIR": str(tmp_path / "none")})
    with pytest.raises(TargetError, match="both set"):
        production({"WATCHME_REPLAY_DIR": str(tmp_path), "WATCHME_HOSTS": "203.0.113.10"})


class _Host:
    print_prefix = "[h] "

    def __init__(self, path):
        self.data = {"replay_file": str(path)}


class _State:
    is_executing = False


def _connector(tmp_path, facts):
    c = replay.ReplayConnector(_State(), _Host(_record(tmp_path / "h.facts.json", facts)))
    c.connect()
    return c


def test_connector_answers_by_command_and_executor(tmp_path):
    from pyinfra.api import StringCommand

    c = _connector(tmp_path, [
        {"command": "cat /etc/x", "executor": {"_sudo": True}, "rc": 0, "stdout": ["root"]},
        {"command": "cat /etc/x", "executor": {}, "rc": 1, "stdout": []}])
    ok, out = c.run_shell_command(StringCommand("cat", "/etc/x"), _sudo=True, _timeout=None,
                                  _success_exit_codes=[0])
    assert ok and out.stdout_lines == ["root"]
    ok, out = c.run_shell_command(StringCommand("cat /etc/x"))
    assert not ok and c.misses == []


def test_connector_miss_is_reported_and_answered_empty(tmp_path, caplog):
    c = _connector(tmp_path, [])
    ok, out = c.run_shell_command("test -e /etc/new", _sudo=True)
    assert ok and out.stdout_lines == []
    assert c.misses == ["test -e /etc/new"]
    assert "[h] not recorded: test -e /etc/new" in caplog.text


def test_connector_never_executes_or_transfers(tmp_path):
    from pyinfra.api.exceptions import ConnectError

    c = _connector(tmp_path, [{"command": "true", "executor": {}, "rc": 0, "stdout": []}])
    c.state.is_executing = True
    with pytest.raises(ConnectError, match="run pyinfra --dry"):
        c.run_shell_command("true")
    with pytest.raises(ConnectError, match="uploads nothing"):
        c.put_file("/etc/x", "/etc/y")


def test_connector_opens_no_socket(tmp_path, monkeypatch):
    import socket

    def refuse(*a, **k):
        raise AssertionError("the replay opened a socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    c = _connector(tmp_path, [{"command": "uname", "executor": {}, "rc": 0, "stdout": ["Linux"]}])
    assert c.run_shell_command("uname")[1].stdout_lines == ["Linux"]


# -- end to end ----------------------------------------------------------------------------

def _recorded_run(env: dict, out) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("WATCHME_")}
    full.update({**env, "WATCHME_RECORD_DIR": str(out)})  # the deploy's own recorder (prefetch.py)
    return subprocess.run([PYINFRA, "--json", "-y", "inventory.py", "deploy.py"], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=900)


# Operations whose plan-time check cannot see their outcome: planned as changes on every
# preview, live or replayed; they change nothing when run (the idempotence gate proves it).
ALWAYS_PLANNED = {"Network monitor --fix (watchme-network members)"}


# The recorded hosts replay as `production`; the record is of a test host, so give them what
# the testhost group sets (else every unit differs by its image pull line).
TESTHOST_DATA = ("--data", "tls_self_signed=true", "--data", "compose_pull=false")


def _replayed(records, **env):
    """(run, {operations the preview says would change})."""
    run = run_deploy({"WATCHME_REPLAY_DIR": str(records), **NO_PREFETCH, **env},
                     "--json", "--dry", *TESTHOST_DATA, yes=False)
    assert run.rc == 0, run.stderr[-3000:]
    plan = sm.summarize(sm.load(run.stdout))
    return run, {op for r in plan.hosts.values() for op in r.changed} - ALWAYS_PLANNED


@pytest.fixture(scope="module")
def records(deploy, testhost_env, tmp_path_factory):
    first = deploy()
    assert first.rc == 0, first.stderr[-3000:]
    out = tmp_path_factory.mktemp("records")
    p = _recorded_run(testhost_env, out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["results"]["totals"]["success"] == 0, "recorded run changed"
    return out


@pytest.fixture(scope="module")
def stopped(records, testhost):
    th.run(["docker", "exec", testhost.name, "systemctl", "stop", "ssh.socket", "ssh.service"])
    assert not th._ssh_banner(testhost.port), "the host still answers SSH"
    yield records
    _ssh_back(testhost)  # if a test failed before the last one


def test_record_written_per_host(records, testhost):
    [path] = records.glob("*.facts.json")
    rec = json.loads(path.read_text())
    assert rec["host"] == f"127.0.0.1:{testhost.port}" and len(rec["facts"]) > 20


def test_replay_of_the_same_code_changes_nothing(stopped, testhost):
    run, would = _replayed(stopped)
    assert would == set(), f"preview of the recorded state plans: {would}"
    assert not th._ssh_banner(testhost.port), "the replay must run with the host unreachable"


def test_replay_shows_a_registry_change_and_what_it_could_not_see(stopped, tmp_path):
    registry = tmp_path / "services.yaml"
    text = (ROOT / "group_data" / "services.yaml").read_text()
    assert "description: Gateway API (watchme-vault-api)" in text
    registry.write_text(text.replace("description: Gateway API (watchme-vault-api)",
                                     "description: Gateway API (renamed in a PR)"))
    run, would = _replayed(stopped, WATCHME_REGISTRY=str(registry))
    assert would, "a changed unit description was not previewed"
    assert any("vault" in op.lower() for op in would), would
    assert replay.MISS in run.stderr  # the lock check at least: the preview says so


def test_replay_refuses_to_execute(stopped, tmp_path):
    """Without --dry the first command is refused: a recorded host is never 'deployed'."""
    registry = tmp_path / "services.yaml"
    registry.write_text((ROOT / "group_data" / "services.yaml").read_text().replace(
        "description: Gateway API (watchme-vault-api)", "description: Gateway API (x)"))
    run = run_deploy({"WATCHME_REPLAY_DIR": str(stopped), "WATCHME_REGISTRY": str(registry),
                      **NO_PREFETCH}, "--json")
    assert run.rc != 0
    assert "a recorded host cannot be changed" in run.stderr + run.stdout


def test_second_run_changes_nothing(stopped, deploy, testhost):
    _ssh_back(testhost)
    assert_idempotent(deploy)


def _ssh_back(testhost) -> None:
    subprocess.run(["docker", "exec", testhost.name, "systemctl", "start", "ssh.service"],
                   capture_output=True)
    for _ in range(30):
        if th._ssh_banner(testhost.port):
            return
        time.sleep(0.5)
    raise AssertionError("sshd did not come back")
