"""tasks/lock.py: one deploy at a time on a real test host, and the last-deploy record."""

from __future__ import annotations

import json
import os
import signal
import runpy
import shlex
import subprocess
import sys
import time

import pytest

from tests.conftest import PYINFRA, ROOT, Run, assert_idempotent, run_deploy
from watchme import lock as wl
from watchme import noop_memo

LOCK = f"{wl.LOCK_DIR}/deploy.lock"
CONFIG_ROOT = runpy.run_path(str(ROOT / "group_data" / "all.py"))["config_root"]


# Unit: the remote script and what it prints ------------------------------------------------

@pytest.mark.parametrize("mode", wl.MODES)
def test_script_is_valid_sh(mode):
    for text in (wl.script(mode, holder={"by": "x"}, plan="F 1 '{}' 'true'\n"),
                 wl.opening(mode, holder={"by": "x"})):
        p = subprocess.run(["sh", "-n", "-c", text], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr


def test_what_is_sent_is_small_and_runs_as_the_source():
    """The command carries the lock script without its comments and the Python packed; the
    packed text defines what the file defines and runs as `python3 -c` runs the file."""
    check = (ROOT / "watchme" / "noop_answers.py").read_text()
    sent = wl.opening("memo", holder={"by": "x", "commit": "c", "since": "s"}, record={},
                      key="-", check=check)
    assert len(sent) < 20_000, len(sent)  # one TCP flight after the SSH handshake
    assert not [l for l in wl.SENT_SCRIPT.splitlines() if l.lstrip().startswith("#")]
    assert [l for l in wl.SCRIPT.splitlines() if l.lstrip().startswith("#")]
    ns: dict = {"__name__": "noop_answers"}
    exec(wl.packed_python(check), ns)
    assert callable(ns["verdict"]) and callable(ns["host_check"])
    out = subprocess.run([sys.executable, "-S", "-c", wl.packed_python("import sys\n"
                          "print(__name__, sys.argv[1:])")], capture_output=True, text=True)
    assert out.stdout == "__main__ []\n", out



@pytest.mark.parametrize("sudo, expect", [
    ("exit 1", ("status=no-sudo\n", 0)),       # sudo -n refused: the script never ran
    ('shift 2; exec "$@"', ("ran\n", 3)),       # the script ran and failed with 1: not sudo
])
def test_opening_tells_a_sudo_refusal_from_the_scripts_own_failure(tmp_path, sudo, expect):
    """One sudo, no `sudo -n true` first: its exit 1 says "no sudo", and the script's own
    exit 1 (set -e) reaches the caller as 3, never as that."""
    for name, body in (("id", "echo 1000"), ("sudo", sudo)):
        (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / name).chmod(0o755)
    text = wl.OPENING.format(s=shlex.quote(wl.ROOT_EXIT + "; set -eu; echo ran; false"))
    p = subprocess.run(["sh", "-c", text], capture_output=True, text=True,
                       env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert (p.stdout, p.returncode) == expect, p.stderr

def test_plan_reaches_the_host_packed_and_verbatim():
    plan = "F 1 '{\"a\": 1}' 'echo $(id) `x`'\n" * 50
    head = wl.script("release", plan=plan).split("\n", 1)[0]
    p = subprocess.run(["sh", "-c", head + 'printf "%s" "$PLAN" | base64 -d | gzip -dc'],
                       capture_output=True, text=True)
    assert p.stdout == plan


def test_split_separates_lock_lines_from_fact_answers():
    assert wl.split(["status=taken", wl.FACTS, "@@watchme-fact 0 {}", "a=b"]) == (
        ["status=taken"], ["@@watchme-fact 0 {}", "a=b"])
    assert wl.split(["status=no-sudo"]) == (["status=no-sudo"], [])


def test_older_commit_is_judged_by_git_ancestry():
    from tasks.lock import older
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    parent = subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    assert older(parent[:7], head[:7] + "-dirty")
    assert not older(head[:7], parent[:7])
    assert not older(head[:7], head[:7])
    assert not older(head[:7], "0123abc")  # unknown to this checkout (a shallow clone)
    assert not older("unknown", head)


def test_holder_reaches_the_host_verbatim():
    """Hostile text in a holder (a laptop name, a CI actor) stays data, not shell."""
    holder = {"by": "a'b\"c $(touch /tmp/pwned) `id`", "commit": "abc", "since": "t"}
    head = wl.script("take", holder=holder).split("\nset -eu\n", 1)[0]  # the values
    p = subprocess.run(["sh", "-c", head + 'printf "%s" "$HOLDER"'], capture_output=True, text=True)
    assert json.loads(p.stdout) == holder


def test_parse_decodes_json_values():
    out = wl.parse(["session=93", 'holder={"by": "alice@laptop"}', "record=", "status=held", "junk"])
    assert out == {"session": "93", "holder": {"by": "alice@laptop"}, "record": None,
                   "status": "held"}


def test_describe_holder_and_record():
    assert wl.describe_holder({"by": "alice@laptop", "commit": "abc1234",
                               "since": "2026-01-01T00:00:00Z"}).startswith(
        "alice@laptop, commit abc1234, since 2026-01-01T00:00:00Z (")
    assert wl.describe_record({"status": "ok", "finished": "T", "by": "bob", "commit": "c",
                               "changed": 1}) == "ok at T by bob, commit c: 1 changed operation"
    assert wl.describe_record(None) == "no deploy recorded on this host yet"


def test_who_in_ci_names_the_run():
    env = {"GITHUB_ACTIONS": "true", "GITHUB_ACTOR": "octo", "GITHUB_SERVER_URL": "https://github.com",
           "GITHUB_REPOSITORY": "o/r", "GITHUB_RUN_ID": "7"}
    assert wl.who(env) == "octo via GitHub Actions (https://github.com/o/r/actions/runs/7)"


def test_commit_is_this_checkout():
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    assert wl.commit().startswith(sha)


# End to end ------------------------------------------------------------------------------


def _env(testhost_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHME_")}
    return {**env, **testhost_env}


def _start(testhost_env: dict) -> subprocess.Popen:
    return subprocess.Popen([PYINFRA, "-y", "--json", "inventory.py", "deploy.py"], cwd=ROOT,
                            env=_env(testhost_env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen) -> Run:
    out, err = p.communicate(timeout=900)
    return Run(p.returncode, out, err)


def _record(host) -> dict:
    return json.loads(host.file(wl.RECORD).content_string)


@pytest.fixture(scope="module")
def first_run(deploy):
    run = deploy()
    assert run.rc == 0, run.stderr[-3000:]
    return run


@pytest.mark.e2e
def test_deploy_releases_and_records(first_run, host):
    assert not host.file(LOCK).exists
    record = _record(host)
    assert record["status"] == "ok"
    assert record["changed"] == len(first_run.changed())
    assert record["commit"] == wl.commit()
    assert "deploy lock released" in first_run.stderr
    # Neither taking nor releasing the lock is an operation that changes anything.
    assert "Release the deploy lock" not in first_run.changed()


@pytest.mark.e2e
def test_held_lock_refuses_deploy_and_names_holder(first_run, deploy, host, testhost):
    """A live holder (pid 1 stands in for its sshd): a deploy fails at once, a preview warns."""
    start = host.check_output("sed 's/.*) //' /proc/1/stat | cut -d' ' -f20")
    holder = {"by": "alice@laptop", "commit": "abc1234", "since": "2026-01-01T00:00:00Z"}
    subprocess.run(["docker", "exec", "-i", testhost.name, "sh", "-c", f"cat > {LOCK}"],
                   input=f"1 {start}\n{json.dumps(holder)}\n", text=True, check=True)
    try:
        t0 = time.monotonic()
        run = deploy()
        elapsed = time.monotonic() - t0
        assert run.rc != 0
        assert run.stdout == ""  # refused before any operation: no results at all
        assert ("another deploy holds the lock: alice@laptop, commit abc1234, since "
                "2026-01-01T00:00:00Z (") in run.last_line
        assert elapsed < 10, f"took {elapsed:.1f}s to refuse"
        dry = deploy("--dry")
        assert dry.rc == 0, dry.stderr[-2000:]
        assert "a deploy is in progress (alice@laptop, commit abc1234" in dry.stderr
        assert host.file(LOCK).content_string.startswith("1 "), "a preview touched the lock"
    finally:
        host.run(f"rm -f {LOCK}")


@pytest.mark.e2e
def test_two_deploys_at_once_one_runs(first_run, host, testhost_env):
    # Something to do that takes a while (apt), so the two really overlap.
    host.run("apt-get remove -y -qq curl")
    a, b = _start(testhost_env), _start(testhost_env)
    runs = [_finish(a), _finish(b)]
    winners = [r for r in runs if r.rc == 0]
    losers = [r for r in runs if r.rc != 0]
    assert len(winners) == 1 and len(losers) == 1, [r.last_line for r in runs]
    assert "another deploy holds the lock: " in losers[0].last_line
    assert f"commit {wl.commit()}, since " in losers[0].last_line
    assert losers[0].stdout == ""
    assert "Install curl" in winners[0].changed()  # only what is missing is installed
    assert host.package("curl").is_installed
    assert not host.file(LOCK).exists
    assert _record(host)["status"] == "ok"


def _unlock(testhost_env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "watchme.unlock", *args], cwd=ROOT,
                          env=_env(testhost_env), capture_output=True, text=True, timeout=120)


def _write_lock(testhost, pid: int, start: str, holder: dict) -> None:
    subprocess.run(["docker", "exec", "-i", testhost.name, "sh", "-c",
                    f"mkdir -p {wl.LOCK_DIR} && cat > {LOCK}"],
                   input=f"{pid} {start}\n{json.dumps(holder)}\n", text=True, check=True)


@pytest.mark.e2e
def test_deploy_killed_after_changes_started_is_taken_over(first_run, host, testhost_env, deploy):
    """SIGKILL of pyinfra while apt installs (the run's first change, under way on the
    host): the apt run goes on holding the lock; the next deploy waits for it, takes the
    lock over and converges."""
    host.run(f"apt-get remove -y -qq curl && rm -rf {CONFIG_ROOT}")
    p = _start(testhost_env)
    assert p.stderr is not None
    started = False
    for line in p.stderr:
        if line.startswith("--> Starting operation: Install "):
            started = True
            time.sleep(1)  # apt is running on the host now
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=60)
    assert started and p.returncode == -signal.SIGKILL
    pid = host.file(LOCK).content_string.split()[0]
    run = deploy("--data", "lock_wait_seconds=600")
    assert run.rc == 0, run.stderr[-3000:]
    assert "took over the deploy lock left by " in run.stderr
    assert not host.file(f"/proc/{pid}").exists, "the killed deploy's sshd session lives on"
    assert host.package("curl").is_installed
    assert host.file(CONFIG_ROOT).is_directory
    assert not host.file(LOCK).exists
    assert _record(host)["status"] == "ok"
    assert_idempotent(deploy)


@pytest.mark.e2e
def test_remote_work_holds_the_lock_after_its_session_ended(first_run, host, testhost, deploy,
                                                            testhost_env):
    """A dead session but a command still running under the work lock: the lock is live."""
    _write_lock(testhost, 999999, "1", {"by": "bob@ci", "commit": "c0ffee1", "since": wl.now()})
    worker = subprocess.Popen(["docker", "exec", testhost.name, "flock", "-s", wl.WORK,
                               "sleep", "45"])
    try:
        time.sleep(1)
        run = deploy()
        assert run.rc != 0
        assert "another deploy holds the lock: bob@ci" in run.last_line
        assert "its remote work is still running" in run.last_line
        refused = _unlock(testhost_env)
        assert refused.returncode == 1 and "not broken" in refused.stderr, refused.stderr
        assert host.file(LOCK).exists
        waited = deploy("--data", "lock_wait_seconds=120")  # polls on the host until sleep ends
        assert waited.rc == 0, waited.stderr[-3000:]
        assert "waited " in waited.stderr and "took over the deploy lock left by bob@ci" in waited.stderr
    finally:
        worker.wait(timeout=120)
        host.run(f"rm -f {LOCK}")


@pytest.mark.e2e
def test_unlock_shows_and_breaks_a_stale_lock_and_a_live_one_only_forced(first_run, host,
                                                                       testhost, testhost_env):
    _write_lock(testhost, 999999, "1", {"by": "carol@laptop", "commit": "abc", "since": wl.now()})
    shown = _unlock(testhost_env, "--show")
    assert shown.returncode == 0, shown.stderr
    assert "locked by carol@laptop, commit abc" in shown.stdout and "stale" in shown.stdout
    assert host.file(LOCK).exists
    broke = _unlock(testhost_env)
    assert broke.returncode == 0 and "broke the lock" in broke.stdout, broke.stderr
    assert not host.file(LOCK).exists
    start = host.check_output("sed 's/.*) //' /proc/1/stat | cut -d' ' -f20")
    _write_lock(testhost, 1, start, {"by": "dave@laptop", "commit": "abc", "since": wl.now()})
    try:
        refused = _unlock(testhost_env)
        assert refused.returncode == 1 and "SSH session (pid 1) is alive" in refused.stderr
        assert host.file(LOCK).exists
        forced = _unlock(testhost_env, "--force")
        assert forced.returncode == 0 and "broke the lock" in forced.stdout
        assert not host.file(LOCK).exists
    finally:
        host.run(f"rm -f {LOCK}")


@pytest.mark.e2e
def test_older_commit_stops_unless_allowed(first_run, host, deploy):
    """The record names a commit whose parent is this checkout: this deploy is older."""
    newer = subprocess.run(["git", "commit-tree", "HEAD^{tree}", "-p", "HEAD", "-m", "newer"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    record = _record(host)
    host.run(f"echo {shlex.quote(json.dumps({**record, 'commit': newer[:7]}))} > {wl.RECORD}")
    run = deploy()
    assert run.rc != 0 and run.stdout == ""
    assert f"is older than the last deployed commit {newer[:7]}" in run.last_line
    assert "--data allow_older=true" in run.last_line
    assert not host.file(LOCK).exists, "a refused deploy kept the lock"
    dry = deploy("--dry")
    assert dry.rc == 0 and "is older than the last deployed commit" in dry.stderr
    allowed = deploy("--data", "allow_older=true")
    assert allowed.rc == 0, allowed.stderr[-3000:]
    assert _record(host)["commit"] == wl.commit()


@pytest.mark.e2e
def test_fact_plan_lives_on_the_host_and_a_fresh_checkout_uses_it(first_run, host, deploy,
                                                                  testhost_env, tmp_path):
    """No local state at all (HOME elsewhere): the no-op reads its facts with the lock."""
    assert deploy().rc == 0
    plan = host.file("/var/lib/watchme/fact-plan.sh")
    assert plan.mode == 0o600 and plan.user == "root"
    run = run_deploy({**testhost_env, "HOME": str(tmp_path), "WATCHME_RECORD_DIR": str(tmp_path)},
                     "--debug")
    assert run.rc == 0, run.stderr[-3000:]
    assert run.stderr.count("Running command on ") == 2  # lock + facts, release + record
    assert "prefetched " in run.stderr
    facts = json.loads(next(tmp_path.glob("*.facts.json")).read_text())
    plan = host.check_output("cat /var/lib/watchme/fact-plan.sh").split("\n", 1)[1]
    planned = noop_memo.planned_commands(plan)  # the F lines and the B line's Python facts
    assert facts["version"] == 1 and len(facts["facts"]) == len(planned) > 20  # every fact, planned
    assert {f["command"] for f in facts["facts"]} == {command for _, command in planned}
    assert all(set(f) == {"command", "executor", "rc", "stdout"} for f in facts["facts"])


@pytest.mark.e2e
def test_a_deploy_that_changes_things_reads_live_after_the_change(first_run, host, deploy):
    """Served facts stop at the first change: a unit edited by hand is put back, and the
    unit's enable/restart that depend on the rewritten file see the new state."""
    unit = host.check_output(f"ls {CONFIG_ROOT}/systemd/*.service | grep -v infrastructure | head -n1")
    host.run(f"sed -i 's/^Description=.*/Description=edited by hand/' {unit}")
    host.run(f"rm -rf {CONFIG_ROOT}/nginx")
    run = deploy()
    assert run.rc == 0, run.stderr[-3000:]
    assert "Description=edited by hand" not in host.file(unit).content_string
    assert host.file(f"{CONFIG_ROOT}/nginx").is_directory
    assert_idempotent(deploy)


@pytest.mark.e2e
def test_failed_deploy_releases_and_records_the_failure(first_run, host, deploy):
    host.run("systemctl stop nginx && echo 'garbage;' > /etc/nginx/conf.d/zz-broken.conf")
    try:
        run = deploy()
        assert run.rc != 0
        assert not host.file(LOCK).exists, "a failed deploy kept the lock"
        record = _record(host)
        assert record["status"] == "failed"
        assert record["failed_operation"] == "Enable and start nginx"
    finally:
        host.run("rm -f /etc/nginx/conf.d/zz-broken.conf")
    again = deploy()
    assert again.rc == 0, again.stderr[-3000:]
    assert _record(host)["status"] == "ok"


@pytest.mark.e2e
def test_without_sudo_the_preflight_refuses(first_run, deploy, host, testhost):
    """The lock needs sudo; without it, the bootstrap's preflight gives the error and fix."""
    host.run("mv /etc/sudoers.d/90-ubuntu /root/90-ubuntu")
    try:
        run = deploy()
        assert run.rc != 0
        assert run.last_line.endswith("user ubuntu cannot sudo without a password; fix: give "
                                      "the deploy user passwordless sudo (as `ubuntu` has on EC2)")
    finally:
        subprocess.run(["docker", "exec", testhost.name, "mv", "/root/90-ubuntu",
                        "/etc/sudoers.d/90-ubuntu"], check=True)


@pytest.mark.e2e
def test_second_run_changes_nothing(first_run, deploy):
    assert_idempotent(deploy)


def test_held_work_keeps_the_lock_and_its_output(tmp_path):
    """A wrapped command holds the work lock while it runs and gives back its output/rc."""
    from pyinfra.api import QuoteString, StringCommand
    work = str(tmp_path / "deploy.work")
    cmd = wl.hold(StringCommand("sleep 1; echo", QuoteString("a'b"), "; echo err >&2; exit 3"))
    text = cmd.get_raw_value().replace(wl.WORK, work)
    p = subprocess.Popen(["sh", "-c", text], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)
    assert subprocess.run(["flock", "-n", "-x", work, "true"]).returncode == 1  # held
    out, err = p.communicate(timeout=10)
    assert (p.returncode, out, err) == (3, "a'b\n", "err\n")
    assert subprocess.run(["flock", "-n", "-x", work, "true"]).returncode == 0
