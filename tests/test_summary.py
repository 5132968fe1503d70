"""watchme summary on real pyinfra --json output.

tests/fixtures/summary/ holds what `pyinfra --json inventory.py deploy.py` printed against
real test hosts (and its stderr, *.log): a dry run and a deploy of a bare host, a no-op
deploy, one host unreachable, one host whose "Enable and start nginx" failed (nginx
config broken) beside a healthy one, and a deploy refused by the lock. The e2e tests in
tests/test_workflows.py produce the same output afresh and summarise it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import WATCHME
from watchme import summary as sm

FIX = Path(__file__).parent / "fixtures" / "summary"


def _load(name: str) -> sm.Summary:
    return sm.summarize(sm.load((FIX / name).read_text()))


def test_dry_run_lists_what_would_change():
    s = _load("dry_bare.json")
    assert s.dry and s.ok
    [(host, r)] = s.hosts.items()
    assert host.startswith("127.0.0.1:")
    assert "Install nginx, docker.io, curl, docker-compose" in r.changed
    assert "Config root /home/ubuntu/watchme-server-configs" in r.changed
    assert r.conditional  # "Reload systemd" waits on a unit change (_if)
    assert sm.headline(s).startswith("Preview (dry run): 1 host would change")


def test_deploy_of_bare_host():
    s = _load("deploy_bare.json")
    assert not s.dry and s.ok
    [r] = s.hosts.values()
    assert "Install nginx, docker.io, curl, docker-compose" in r.changed
    assert "Release the deploy lock" in r.unchanged  # lock bookkeeping is no change
    assert not r.failed
    assert sm.headline(s) == f"Deploy ok: 1 host, {len(r.changed)} changed, 0 failed operations"


def test_noop_deploy_changes_nothing():
    s = _load("deploy_noop.json")
    [r] = s.hosts.values()
    assert s.ok and r.changed == [] and len(r.unchanged) > 50


def test_unreachable_host_fails_the_summary():
    s = _load("unreachable.json")
    assert s.failed_hosts == ["127.0.0.1:1"]
    assert s.hosts["127.0.0.1:1"].host_failed
    assert not s.ok
    text = sm.render_text(s, log=(FIX / "unreachable.log").read_text())
    assert "127.0.0.1:1  (host failed)" in text
    assert "deploy failed: 127.0.0.1:1: Could not connect" in text


def test_failed_operation_and_the_rest_not_run():
    s = _load("op_failed.json")
    bad, good = s.hosts["127.0.0.1:32779"], s.hosts["127.0.0.1:32783"]
    assert bad.failed == ["Enable and start nginx"]
    assert "Config root /home/ubuntu/watchme-server-configs" in bad.not_run
    assert bad.host_failed and not good.failed and good.changed
    text = sm.render_text(s, sm.load_records(str(FIX / "op_failed_records")),
                          (FIX / "op_failed.log").read_text())
    assert "failed at 'Enable and start nginx'" in text  # the record written on failure
    assert "127.0.0.1:32779: Enable and start nginx\n  Job for nginx.service failed" in text


def test_markdown_table_and_details():
    s = _load("op_failed.json")
    md = sm.render_markdown(s, title="Deploy of abc1234")
    assert md.startswith("### Deploy of abc1234\n")
    assert "| 127.0.0.1:32779 (failed) | 0 | 2 | 1 |" in md
    assert "- failed: <ul><li>Enable and start nginx</li></ul>" in md
    assert "<details><summary>6 unchanged</summary>" in md


def test_markdown_escapes_names():
    s = sm.Summary(dry=False, hosts={"h": sm.HostReport(changed=["a | b `c` <d>"])},
                   failed_hosts=[])
    assert "<li>a \\| b 'c' &lt;d></li>" in sm.render_markdown(s)


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([WATCHME, "summary", *args], input=stdin, capture_output=True, text=True)


@pytest.mark.parametrize("fixture, rc", [("dry_bare.json", 0), ("deploy_bare.json", 0),
                                         ("deploy_noop.json", 0), ("unreachable.json", 1),
                                         ("op_failed.json", 1)])
def test_exit_code(fixture, rc):
    assert _cli("--json-file", str(FIX / fixture)).returncode == rc
    assert _cli(stdin=(FIX / fixture).read_text()).returncode == rc  # stdin too


def test_no_json_is_a_failure_quoting_the_log():
    """The lock refused the deploy: pyinfra printed no JSON, only its error."""
    p = _cli("--log", str(FIX / "lock_held.log"), "--markdown")
    assert p.returncode == 1
    assert "Run failed before pyinfra printed its results" in p.stdout
    assert "another deploy holds the lock: root@vm, commit b0cd5ee-dirty" in p.stdout


def test_records_show_lock_holder(tmp_path):
    (tmp_path / "h.json").write_text(json.dumps({
        "host": "h", "lock": {"by": "alice@laptop", "commit": "abc1234", "since": "2026-01-01T00:00:00Z"},
        "last_deploy": None}))
    text = sm.render_text(sm.summarize(None), sm.load_records(str(tmp_path)))
    assert "deploy in progress: alice@laptop, commit abc1234, since 2026-01-01T00:00:00Z" in text
    assert "last deploy: no deploy recorded on this host yet" in text


@pytest.mark.parametrize("text, error", [("{", "input is not JSON"), ("[]", "not pyinfra --json")])
def test_bad_input_is_a_usage_error(text, error):
    p = _cli(stdin=text)
    assert p.returncode == 2 and error in p.stderr


def test_fact_records_beside_the_lock_records_are_not_lock_records(tmp_path):
    (tmp_path / "h.json").write_text(json.dumps({"host": "h", "last_deploy": {"status": "ok"},
                                                 "lock": None}))
    (tmp_path / "h.zz.facts.json").write_text(json.dumps({"version": 1, "host": "h", "facts": []}))
    assert sm.load_records(str(tmp_path)) == {"h": {"host": "h", "last_deploy": {"status": "ok"},
                                                    "lock": None}}
