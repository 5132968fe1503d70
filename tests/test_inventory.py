"""inventory.py and watchme/targets.py: bad input is refused before any SSH connection."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_deploy
from watchme import targets
from watchme.targets import TargetError, parse_hosts, production


def test_parse_hosts_forms():
    assert parse_hosts("ubuntu@203.0.113.10:2222, 203.0.113.11", "ubuntu") == [
        ("203.0.113.10:2222", {"ssh_hostname": "203.0.113.10", "ssh_user": "ubuntu", "ssh_port": 2222}),
        ("203.0.113.11", {"ssh_hostname": "203.0.113.11", "ssh_user": "ubuntu"}),
    ]


@pytest.mark.parametrize("spec", ["ubuntu@@x", "host:99999", "a b", ","])
def test_parse_hosts_rejects(spec):
    with pytest.raises(TargetError, match="WATCHME_HOSTS"):
        parse_hosts(spec, "ubuntu")


def test_production_keeps_host_key_checking_on(tmp_path):
    key = tmp_path / "key"
    key.write_text("x")
    [(name, data)] = production({"WATCHME_HOSTS": "203.0.113.10", "WATCHME_SSH_KEY": str(key),
                                 "WATCHME_SSH_USER": "admin"})
    assert data["ssh_strict_host_key_checking"] == "yes"
    assert data["ssh_user"] == "admin" and data["ssh_key"] == str(key)
    assert "ssh_known_hosts_file" not in data  # paramiko reads ~/.ssh/known_hosts


def test_missing_key_file_named(tmp_path):
    with pytest.raises(TargetError, match="WATCHME_SSH_KEY: no such file"):
        production({"WATCHME_HOSTS": "h", "WATCHME_SSH_KEY": str(tmp_path / "nope")})


def test_testhost_state_file(tmp_path):
    state = tmp_path / "host.json"
    state.write_text(json.dumps({"name": "t", "port": 2222, "user": "ubuntu", "key": "/k",
                                 "known_hosts": "/kh"}))
    [(name, data)] = targets.testhost({"WATCHME_TESTHOST": str(state)})
    assert name == "127.0.0.1:2222" and data["ssh_strict_host_key_checking"] == "yes"
    assert targets.testhost({"WATCHME_HOSTS": "h", "WATCHME_TESTHOST": str(state)}) == []
    with pytest.raises(TargetError, match="make deploy-local"):
        targets.testhost({"WATCHME_TESTHOST": str(tmp_path / "none.json")})


def test_bad_target_stops_before_ssh():
    run = run_deploy({"WATCHME_HOSTS": "ubuntu@@x"})
    assert run.rc != 0
    assert "inventory: WATCHME_HOSTS: 'ubuntu@@x' is not [user@]host[:port]" in run.stderr
    assert "Connecting to hosts" not in run.stderr


def test_bad_registry_stops_before_ssh(tmp_path):
    bad = tmp_path / "services.yaml"
    bad.write_text("services:\n  - name: x\n    colour: red\n")
    # A host that would fail loudly if reached: nothing may try.
    run = run_deploy({"WATCHME_HOSTS": "ubuntu@127.0.0.1:1", "WATCHME_REGISTRY": str(bad)})
    assert run.rc != 0
    assert "registry: " in run.stderr and "services[x].colour: unknown key" in run.stderr
    assert "Connecting to hosts" not in run.stderr
