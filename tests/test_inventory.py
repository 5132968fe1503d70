"""inventory.py and watchme/targets.py: bad input is refused before any SSH connection."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import run_deploy
from watchme import targets
from watchme.targets import TargetError, parse_hosts, production


def test_parse_hosts_forms():
    assert parse_hosts("ubuntu@203.0.113.10:2222, 203.0.113.11", "ubuntu") == [
        ("203.0.113.10:2222", {"ssh_hostname": "203.0.113.10", "ssh_user": "ubuntu", "ssh_port": 2222,
                               "placement_name": "203.0.113.10:2222", "front": True}),
        ("203.0.113.11", {"ssh_hostname": "203.0.113.11", "ssh_user": "ubuntu",
                          "placement_name": "203.0.113.11", "front": False}),
    ]


def test_named_entries_first_is_the_front():
    """Issue 14's form: name=[user@]addr[:port]; the first entry is the front."""
    assert parse_hosts("front=admin@203.0.113.10:2222,whisper=203.0.113.11", "ubuntu") == [
        ("front", {"ssh_hostname": "203.0.113.10", "ssh_user": "admin", "ssh_port": 2222,
                   "placement_name": "front", "front": True}),
        ("whisper", {"ssh_hostname": "203.0.113.11", "ssh_user": "ubuntu",
                     "placement_name": "whisper", "front": False}),
    ]


@pytest.mark.parametrize("spec, message", [
    ("ubuntu@@x", "is not [name=][user@]host[:port]"),
    ("203.0.113.10:99999", "port '99999' is not 1-65535"),
    ("203.0.113.10:0", "port '0' is not 1-65535"),
    ("a b", "is not [name=][user@]host[:port]"),
    (",", "names no host"),
    ("a=203.0.113.10,a=203.0.113.11", "'a' is named twice"),
])
def test_parse_hosts_rejects(spec, message, tmp_path):
    with pytest.raises(TargetError, match="WATCHME_HOSTS") as e:
        parse_hosts(spec, "ubuntu", {"WATCHME_SSH_CONFIG": str(_config(tmp_path, ""))})
    assert message in str(e.value) and "fix:" in str(e.value)


def _config(tmp_path, text: str):
    path = tmp_path / "ssh_config"
    path.write_text(text)
    return path


def test_ssh_config_alias_resolves(tmp_path):
    key = tmp_path / "watchme-key.pem"
    key.write_text("x")
    cfg = _config(tmp_path, f"Host watchme-prod\n  HostName 203.0.113.10\n  User admin\n"
                            f"  Port 2200\n  IdentityFile {key}\n")
    [(name, data)] = parse_hosts("watchme-prod", "ubuntu", {"WATCHME_SSH_CONFIG": str(cfg)})
    assert name == "watchme-prod"
    assert data == {"ssh_hostname": "203.0.113.10", "ssh_user": "admin", "ssh_port": 2200,
                    "ssh_key": str(key), "placement_name": "watchme-prod", "front": True}
    # An explicit user@ or :port wins over the alias's.
    [(_, data)] = parse_hosts("ubuntu@watchme-prod:22", "x", {"WATCHME_SSH_CONFIG": str(cfg)})
    assert (data["ssh_user"], data["ssh_port"]) == ("ubuntu", 22)


@pytest.mark.parametrize("config, spec, message", [
    ("", "watchme-prod", "'watchme-prod' is no address and no Host alias in"),
    ("Host p\n  HostName 203.0.113.10\n  IdentityFile /nope/key.pem\n", "p",
     "IdentityFile /nope/key.pem"),
    ("Host p\n  HostName 203.0.113.10\n  Port 70000\n", "p", "Port in"),
])
def test_alias_errors_name_the_fix(tmp_path, config, spec, message):
    with pytest.raises(TargetError) as e:
        parse_hosts(spec, "ubuntu", {"WATCHME_SSH_CONFIG": str(_config(tmp_path, config))})
    assert message in str(e.value) and "fix:" in str(e.value)


def test_dns_names_need_no_alias(tmp_path):
    [(name, data)] = parse_hosts("api.hey-watch.me", "ubuntu",
                                 {"WATCHME_SSH_CONFIG": str(_config(tmp_path, ""))})
    assert data["ssh_hostname"] == "api.hey-watch.me"


def test_key_must_be_a_private_key(tmp_path):
    pub = tmp_path / "key.pub"
    pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9 me\n")
    with pytest.raises(TargetError, match="is not a private key .*fix: the private key file"):
        production({"WATCHME_HOSTS": "203.0.113.10", "WATCHME_SSH_KEY": str(pub)})


def test_production_keeps_host_key_checking_on(tmp_path):
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    [(name, data)] = production({"WATCHME_HOSTS": "203.0.113.10", "WATCHME_SSH_KEY": str(key),
                                 "WATCHME_SSH_USER": "admin"})
    assert data["ssh_strict_host_key_checking"] == "yes"
    assert data["ssh_user"] == "admin" and data["ssh_key"] == str(key)
    assert "ssh_known_hosts_file" not in data  # paramiko reads ~/.ssh/known_hosts


def test_missing_key_file_named(tmp_path):
    with pytest.raises(TargetError, match="WATCHME_SSH_KEY: no such file"):
        production({"WATCHME_HOSTS": "203.0.113.10", "WATCHME_SSH_KEY": str(tmp_path / "nope")})


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
    assert "inventory: WATCHME_HOSTS: 'ubuntu@@x' is not [name=][user@]host[:port]" in run.stderr
    assert "Connecting to hosts" not in run.stderr


def test_bad_registry_stops_before_ssh(tmp_path):
    bad = tmp_path / "services.yaml"
    bad.write_text("services:\n  - name: x\n    colour: red\n")
    # A host that would fail loudly if reached: nothing may try.
    run = run_deploy({"WATCHME_HOSTS": "ubuntu@127.0.0.1:1", "WATCHME_REGISTRY": str(bad)})
    assert run.rc != 0
    assert "registry: " in run.stderr and "services[x].colour: unknown key" in run.stderr
    assert "Connecting to hosts" not in run.stderr
