"""The no-op memo (watchme/noop_memo.py): one ssh command says "no change" only when pyinfra
would; every drift defeats it and the full run repairs; the lock is honoured.

Unit tests first (the inputs key, the answers hash, the --json shape, no pyinfra imported),
then end to end on a real test host with two busybox services on watchme-network.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
import textwrap
from pathlib import Path

import pytest

from tests import fake_services
from tests.conftest import ROOT, WATCHME, Run, assert_idempotent
from tests.fake_services import wait
from watchme import lock as wl
from watchme import noop_answers, noop_memo
from watchme.summary import summarize

# The e2e tests start from a host with the packages preinstalled (tests/provisioned.py).
pytestmark = pytest.mark.provisioned

# -- unit: the inputs key --------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    for f in noop_memo.INPUT_FILES:
        (tmp_path / f).write_text(f"# {f}\n")
    for d in noop_memo.INPUT_DIRS:
        (tmp_path / d / "sub").mkdir(parents=True)
        (tmp_path / d / "sub" / "x.txt").write_text(d)
    return tmp_path


def _key(tree, env=None, args=(), commit="abc1234"):
    return noop_memo.inputs_key(tree, dict(env or {}), noop_memo.parse_args(list(args), {}), commit)


@pytest.mark.parametrize("path", [*noop_memo.INPUT_FILES,
                                  *(f"{d}/sub/x.txt" for d in noop_memo.INPUT_DIRS)])
def test_every_input_file_changes_the_key(tree, path):
    before = _key(tree)
    (tree / path).write_text((tree / path).read_text() + "changed\n")
    assert _key(tree) != before


def test_a_new_file_changes_the_key_and_bytecode_does_not(tree):
    before = _key(tree)
    (tree / "watchme" / "__pycache__").mkdir()
    (tree / "watchme" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    assert _key(tree) == before
    (tree / "templates" / "new.j2").write_text("x")
    assert _key(tree) != before


def test_environment_registry_and_state_files_change_the_key(tree, tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    registry, state = d / "r.yaml", d / "host.json"
    registry.write_text("services: []\n")
    state.write_text('{"port": 1}')
    base = {"WATCHME_REGISTRY": str(registry), "WATCHME_TESTHOST": str(state)}
    before = _key(tree, base)
    registry.write_text("services: []\n# edited\n")
    assert _key(tree, base) != before, "the registry's content"
    registry.write_text("services: []\n")
    state.write_text('{"port": 2}')
    assert _key(tree, base) != before, "the test host state (host name, port)"
    state.write_text('{"port": 1}')
    assert _key(tree, base) == before
    for var in ("WATCHME_HOSTS", "WATCHME_PRIVATE_ADDRESSES", "WATCHME_SSH_USER", "WATCHME_NEW"):
        assert _key(tree, {**base, var: "x"}) != before, var
    for var in noop_memo.STEERING_ENV:  # where records go, --full: never what is deployed
        assert _key(tree, {**base, var: "x"}) == before, var


def test_options_and_commit_change_the_key(tree):
    before = _key(tree)
    assert _key(tree, args=["--data", "allow_older=true"]) != before
    assert _key(tree, args=["--data=http_only=true"]) != before
    assert _key(tree, args=["--limit", "testhost"]) != before
    assert _key(tree, commit="def5678") != before
    # Output and the lock's patience change nothing that is deployed.
    assert _key(tree, args=["-y", "--json", "--data", "lock_wait_seconds=600"]) == before


def test_host_key_is_per_host():
    assert noop_memo.host_key("k", "a") != noop_memo.host_key("k", "b")


def test_options_the_fast_path_does_not_know_run_pyinfra():
    o = noop_memo.parse_args(["-y", "--json", "--data", "a=1", "--limit=web", "--full"], {})
    assert (o.fast, o.full, o.json, o.data, o.limits) == (True, True, True, ["a=1"], ["web"])
    assert o.pyinfra_args == ["-y", "--json", "--data", "a=1", "--limit", "web"]
    assert not noop_memo.parse_args(["--dry"], {}).fast
    assert not noop_memo.parse_args(["--serial"], {}).fast
    assert noop_memo.parse_args([], {noop_memo.FULL_ENV: "1"}).full


def test_lock_wait_from_data_then_group_data():
    o = noop_memo.parse_args(["--data", "lock_wait_seconds=600"], {})
    assert noop_memo.lock_wait(o, ROOT) == 600
    assert noop_memo.lock_wait(noop_memo.parse_args([], {}), ROOT) == 0  # group_data/all.py


def test_targets_follow_the_inventory_rules(tmp_path):
    state = tmp_path / "host.json"
    state.write_text(json.dumps({"name": "t", "port": 2222, "user": "ubuntu", "key": "/k",
                                 "known_hosts": "/kh"}))
    [t] = noop_memo.targets({"WATCHME_TESTHOST": str(state)})
    assert t.name == "127.0.0.1:2222" and t.group == "testhost"
    assert t.ssh[-5:] == ["-p", "2222", "-l", "ubuntu", "127.0.0.1"]
    assert "StrictHostKeyChecking=yes" in t.ssh and "UserKnownHostsFile=/kh" in t.ssh
    hosts = noop_memo.targets({"WATCHME_HOSTS": "front=ubuntu@203.0.113.10:2200,203.0.113.11",
                               "WATCHME_SSH_KEY": "/key", "WATCHME_KNOWN_HOSTS": "/kh"})
    assert [h.name for h in hosts] == ["front", "203.0.113.11"]
    assert hosts[0].ssh[-5:] == ["-p", "2200", "-l", "ubuntu", "203.0.113.10"]
    assert hosts[1].ssh[-3:] == ["-l", "ubuntu", "203.0.113.11"]
    assert "-i" in hosts[0].ssh and "UserKnownHostsFile=/kh" in hosts[0].ssh
    assert [h.name for h in noop_memo.limited(hosts, ["fr*"])] == ["front"]
    assert len(noop_memo.limited(hosts, ["production"])) == 2
    with pytest.raises(noop_memo.NoFastPath):
        noop_memo.targets({"WATCHME_REPLAY_DIR": "/x"})



def test_the_memo_check_exchanges_keys_as_pyinfras_connection_does():
    """OpenSSH is told paramiko's key exchanges (pyinfra's connection; SHA-1 ones left out),
    so the check is no weaker than the deploy it stands in for and pays no post-quantum
    key generation (~0.12 s of the laptop's CPU with OpenSSH 9.x's default)."""
    import paramiko

    ours = noop_memo.KEX.split(",")
    theirs = [k for k in paramiko.Transport._preferred_kex if not k.endswith("sha1")]
    assert set(ours) - {"curve25519-sha256"} == set(theirs)  # (the RFC 8731 name of the first)
    assert ours[:2] == ["curve25519-sha256", theirs[0]]
    cmd = noop_memo._ssh_base(None, None, None)
    assert f"KexAlgorithms={noop_memo.KEX}" in cmd
    supported = subprocess.run(["ssh", "-Q", "kex"], capture_output=True, text=True).stdout.split()
    assert set(ours) <= set(supported), set(ours) - set(supported)


# -- unit: the answers hash --------------------------------------------------------------------

REPORT = ('{"fact": ["watchme.network_check", "NetworkReport", {}, {}], "sha": "1"}')
OTHER = ('{"fact": ["watchme.units", "LoadedUnits", {}, {}], "sha": "2"}')


def _out(checked_at: str, units: str = "a") -> str:
    return (f"{noop_answers.MARK} 0 {REPORT}\n{{\n  \"ok\": true,\n  \"checked_at\": \"{checked_at}\"\n}}\n"
            f"{noop_answers.MARK} 3 {OTHER}\n{units}\n\n")


def test_answers_hash_is_what_pyinfra_reads():
    h = lambda text, commit="c": noop_answers.answers_hash(noop_answers.blocks_from_output(text), commit)
    assert h(_out("2026-01-01T00:00:00Z")) == h(_out("2026-12-31T23:59:59Z")), "checked_at is volatile"
    assert h(_out("t", "a")) != h(_out("t", "b"))
    assert h(_out("t")) != h(_out("t"), "other commit")
    # What pyinfra's stdout_lines hold for a live read, as the deploy hashes it: same hash.
    blocks = [(0, REPORT, ["{", '  "ok": true,', '  "checked_at": "x"', "}"]), (1, OTHER, ["a", ""])]
    assert noop_answers.answers_hash(blocks, "c") == h(_out("y"))


def test_no_deploy_code_reads_the_volatile_fields():
    """A field left out of the hash must be one the deploy never decides on: the report's
    checked_at, and LoadedUnits' "active" (ActiveState)."""
    read_active = re.compile(r"""\[\s*["']active["']\s*\]|\.get\(\s*["']active["']""")
    assert set(noop_answers.VOLATILE) == {("watchme.network_check", "NetworkReport"),
                                          ("watchme.units", "LoadedUnits")}
    for path in [*ROOT.glob("tasks/*.py"), *ROOT.glob("watchme/*.py"), ROOT / "deploy.py"]:
        if path.name == "noop_answers.py":
            continue
        text = path.read_text()
        assert "checked_at" not in text, path
        assert not read_active.search(text), path


def test_json_on_a_hit_is_what_the_summary_reads():
    ops = [{"op_hash": "h1", "name": "A", "names": ["A"], "args": []},
           {"op_hash": "h2", "name": "B", "names": ["B"], "args": []}]
    target = noop_memo.Target("h", "testhost", [])
    data = noop_memo.run_json([noop_memo.Answer(target, "hit", memo={"operations": ops})])
    assert data["results"]["totals"] == {"hosts": 2, "success": 0, "error": 0, "no_change": 2}
    s = summarize(data)
    assert s.ok and s.hosts["h"].unchanged == ["A", "B"] and not s.hosts["h"].changed


def test_the_fast_path_imports_no_pyinfra_pydantic_or_jinja():
    p = subprocess.run([sys.executable, "-X", "importtime", "-c",
                        "import watchme.deploy, watchme.noop_memo, watchme.noop_answers"],
                       capture_output=True, text=True, cwd=ROOT)
    heavy = [l for l in p.stderr.splitlines()
             if re.search(r"\| +(pyinfra|pydantic|jinja2|paramiko|gevent)\b", l)]
    assert p.returncode == 0 and heavy == [], heavy[:5]


def test_ssh_starts_before_the_imports_it_does_not_need(tmp_path):
    """Every millisecond before the memo check's ssh starts is one more of a no-op: by then
    git has been asked and nothing but the command's own needs is imported (no subprocess,
    pathlib, hashlib, datetime; those come while ssh connects). Run without site, as a
    launcher with a plain path entry runs it."""
    state = tmp_path / "host.json"
    state.write_text(json.dumps({"name": "h", "port": 2222, "user": "ubuntu",
                                 "key": "/k", "known_hosts": "/kh"}))
    probe = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        import watchme.spawn as sp
        real, seen = sp.Proc.__init__, []
        def init(self, argv, *a, **k):
            if argv[0] == "ssh":
                print(" ".join(seen), "|", " ".join(sorted(sys.modules)))
                os._exit(0)
            seen.append(argv[3])
            real(self, argv, *a, **k)
        sp.Proc.__init__ = init
        from watchme.deploy import main
        main(["-y", "--json"])
        """)
    p = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, "WATCHME_TESTHOST": str(state)})
    asked, _, loaded = p.stdout.partition(" | ")
    assert p.returncode == 0 and loaded, p.stdout + p.stderr
    assert asked.split() == ["rev-parse", "status"], asked
    early = set(loaded.split()) & {"subprocess", "pathlib", "hashlib", "datetime", "selectors",
                                   "threading", "base64", "dataclasses", "inspect"}
    assert not early, f"imported before ssh started: {sorted(early)}"


# -- end to end ---------------------------------------------------------------------------------

ALPHA = {"name": "alpha", "container": "watchme-alpha", "ip": "172.27.0.6", "port": 8000}
BETA = {"name": "beta", "container": "watchme-beta", "ip": "172.27.0.7", "port": 8001}
MEMO = wl.MEMO
MISS = "--> no-op memo: "


@pytest.fixture(scope="module")
def env(tmp_path_factory, testhost_env):
    d = tmp_path_factory.mktemp("memo")
    shim = d / "bin"
    shim.mkdir()
    # Counts the OpenSSH commands of the fast path (pyinfra itself uses paramiko).
    (shim / "ssh").write_text(f"#!/bin/sh\necho x >> {d / 'ssh.log'}\nexec /usr/bin/ssh \"$@\"\n")
    (shim / "ssh").chmod(0o755)
    return {**testhost_env, "WATCHME_REGISTRY": fake_services.registry(d / "r.yaml", [ALPHA, BETA]),
            "PATH": f"{shim}:{os.environ['PATH']}", "SSH_LOG": str(d / "ssh.log")}


def _wd(env: dict, *args: str) -> tuple[Run, int]:
    """`watchme deploy -y --json ARGS`: the run, and how many ssh commands it sent."""
    log = Path(env["SSH_LOG"])
    log.unlink(missing_ok=True)
    full = {k: v for k, v in os.environ.items() if not k.startswith("WATCHME_")}
    full.update(env)
    p = subprocess.run([WATCHME, "deploy", "-y", "--json", *args], cwd=ROOT, env=full,
                       capture_output=True, text=True, timeout=900)
    return Run(p.returncode, p.stdout, p.stderr), \
        len(log.read_text().splitlines()) if log.exists() else 0


def _memo(host) -> dict | None:
    f = host.file(MEMO)
    return json.loads(f.content_string) if f.exists else None


@pytest.fixture(scope="module")
def converged(testhost, host, env):
    first, _ = _wd(env)
    assert first.rc == 0, first.stderr[-3000:]
    assert first.totals["success"] > 0
    assert "no-op memo: none (" in first.stderr and _memo(host) is None
    fake_services.install(host, [ALPHA, BETA])
    started, _ = _wd(env)
    assert started.rc == 0, started.stderr[-3000:]
    assert started.totals["success"] > 0 and _memo(host) is None, "a changing run left a memo"
    for s in (ALPHA, BETA):
        wait(host, f"curl -sf http://127.0.0.1:{s['port']}/ | grep -qx {s['name']}")
    noop, _ = _wd(env)  # the first no-op: reads what the converge could not plan, writes the memo
    assert noop.rc == 0 and noop.totals["success"] == 0, noop.stderr[-3000:]
    assert "no-op memo: written" in noop.stderr
    return testhost


def _hit(env: dict, host, *args: str) -> Run:
    run, sessions = _wd(env, *args)
    assert run.rc == 0, run.stderr[-3000:]
    assert MISS not in run.stderr, [l for l in run.stderr.splitlines() if "memo" in l]
    assert sessions == 1, f"{sessions} ssh commands"
    return run


def test_memo_hit_is_one_ssh_command_that_says_no_change(converged, host, env):
    f = host.file(MEMO)
    assert (f.user, f.group, f.mode) == ("root", "root", 0o600)
    run = _hit(env, host)
    name = f"127.0.0.1:{converged.port}"
    assert f"no change (memo: {name})" in run.stderr
    assert run.totals["success"] == 0 and run.totals["error"] == 0 and run.totals["no_change"] > 10
    assert summarize(run.json).ok
    record = json.loads(host.file(wl.RECORD).content_string)
    assert record["memo"] is True and record["changed"] == 0 and record["status"] == "ok"
    assert not host.file(f"{wl.LOCK_DIR}/deploy.lock").exists, "the lock was given back"
    full, sessions = _wd(env, "--full")
    assert MISS + "--full" in full.stderr and sessions == 0
    assert full.totals["success"] == 0 and "no-op memo: written" in full.stderr
    # the memo's JSON is the zero-change run it memoized: the same operations
    assert full.totals["no_change"] == run.totals["no_change"]


def _drift_is_repaired(env: dict, host, why: str, repairs: bool, *args: str) -> None:
    """The memo misses (why), pyinfra repairs (when there is something to repair), no memo
    is left by that run; the next run writes it again and the one after that hits."""
    run, _ = _wd(env, *args)
    assert run.rc == 0, run.stderr[-3000:]
    assert MISS in run.stderr and why in run.stderr, run.stderr[-2000:]
    if repairs:
        assert run.totals["success"] > 0, "pyinfra repaired nothing"
        assert _memo(host) is None, "a run that changed something wrote the memo"
        again, _ = _wd(env, *args)
        assert again.totals["success"] == 0 and "no-op memo: written" in again.stderr
    else:
        assert run.totals["success"] == 0 and "no-op memo: written" in run.stderr
    _hit(env, host, *args)


ANSWERS = "the host's answers differ"
INPUTS = "the inputs differ"


def test_an_edited_file_under_the_config_root(converged, host, env):
    host.run("echo '# drift' >> /opt/watchme/scripts/network_monitor.py")
    _drift_is_repaired(env, host, ANSWERS, True)
    assert "# drift" not in host.file("/opt/watchme/scripts/network_monitor.py").content_string


def test_a_stopped_unit(converged, host, env):
    host.run("systemctl stop watchme-guard.timer")
    _drift_is_repaired(env, host, ANSWERS, True)
    assert host.service("watchme-guard.timer").is_running


def test_a_container_off_watchme_network(converged, host, env):
    host.run("docker network disconnect watchme-network watchme-alpha")
    _drift_is_repaired(env, host, ANSWERS, True)
    c = json.loads(host.check_output("docker inspect watchme-alpha"))[0]
    assert "watchme-network" in c["NetworkSettings"]["Networks"]


def test_an_edited_nginx_site(converged, host, env):
    site = "/etc/nginx/sites-available/api.hey-watch.me"
    host.run(f"echo '# drift' >> {site}")
    _drift_is_repaired(env, host, ANSWERS, True)
    assert "# drift" not in host.file(site).content_string


def test_a_registry_change_and_a_data_change_are_new_inputs(converged, host, env, tmp_path):
    registry = tmp_path / "r.yaml"
    registry.write_text(Path(env["WATCHME_REGISTRY"]).read_text() + "# a comment\n")
    _drift_is_repaired({**env, "WATCHME_REGISTRY": str(registry)}, host, INPUTS, False)
    _drift_is_repaired(env, host, INPUTS, False, "--data", "allow_route_removal=true")
    _drift_is_repaired(env, host, INPUTS, False)


def test_another_commit_on_the_host_defeats_the_memo(converged, host, env):
    """The last deployed commit is part of the answers (the deploy judges allow_older on it)."""
    record = json.loads(host.file(wl.RECORD).content_string)
    host.run(f"printf '%s\\n' '{json.dumps({**record, 'commit': '0000000'})}' > {wl.RECORD}")
    _drift_is_repaired(env, host, ANSWERS, False)


def test_a_held_lock_fails_the_fast_path_or_is_waited_for(converged, host, env, testhost):
    holder = {"by": "bob@ci", "commit": "c0ffee1", "since": wl.now()}
    subprocess.run(["docker", "exec", "-i", testhost.name, "sh", "-c",
                    f"mkdir -p {wl.LOCK_DIR} && cat > {wl.LOCK_DIR}/deploy.lock"],
                   input=f"999999 1\n{json.dumps(holder)}\n", text=True, check=True)
    worker = subprocess.Popen(["docker", "exec", testhost.name, "flock", "-s", wl.WORK,
                               "sleep", "25"])
    try:
        time.sleep(1)
        refused, sessions = _wd(env)
        assert refused.rc == 1 and sessions == 1
        assert "another deploy holds the lock: bob@ci" in refused.stderr
        assert "its remote work is still running" in refused.stderr
        assert MISS not in refused.stderr, "no pyinfra run behind a held lock"
        waited = _hit(env, host, "--data", "lock_wait_seconds=120")
        assert "took over the deploy lock left by bob@ci" in waited.stderr
        assert re.search(r"no change \(memo: ", waited.stderr)
    finally:
        worker.wait(timeout=120)
        host.run(f"rm -f {wl.LOCK_DIR}/deploy.lock")


def test_a_memo_check_cut_before_its_key_arrives_ends_and_its_lock_is_taken_over(
        converged, host, env):
    """The key comes on stdin once ssh is up (KEY=-): a check whose laptop dies before
    sending it does not hang on the host (stdin's end is an empty key: a miss), leaves at
    most a stale lock (its session is gone) that the next deploy takes over, the services
    keep serving, and that next deploy is a hit."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("WATCHME_")}
    full.update(env)
    lock = host.file(wl.LOCK_DIR + "/deploy.lock")
    check = noop_memo.Check(noop_memo.targets(full)[0], wl.holder(full), 0, False)
    deadline = time.time() + 60
    while not lock.exists and time.time() < deadline:
        time.sleep(0.2)
    assert lock.exists, "the check never took the lock"
    time.sleep(1)  # the plan has run: the host now waits for the key
    check.proc.kill()  # the connection is cut, no key sent
    check.proc.wait()
    deadline = time.time() + 60
    while host.run("pgrep -f [z]lib.decompress").rc == 0 and time.time() < deadline:
        time.sleep(0.5)
    assert host.run("pgrep -f [z]lib.decompress").rc != 0, "the check still runs on the host"
    for s in (ALPHA, BETA):
        assert host.run(f"curl -sf http://127.0.0.1:{s['port']}/").stdout.strip() == s["name"]
    _hit(env, host)
    assert not lock.exists


def test_a_server_without_the_memos_key_exchanges_gets_pyinfra(converged, host, env, testhost):
    """The memo check offers pyinfra's key exchanges without the SHA-1 ones: a server that
    only speaks diffie-hellman-group14-sha1 refuses it, the deploy runs pyinfra (paramiko
    still connects), changes nothing, the services keep serving, and once the server
    speaks curve25519 again the next deploy is a memo hit."""
    def sshd(cmd: str) -> None:  # docker exec: testinfra's own ssh would be refused too
        subprocess.run(["docker", "exec", testhost.name, "sh", "-c", cmd], check=True)
    drop_in = "/etc/ssh/sshd_config.d/00-watchme-test-kex.conf"
    sshd(f"echo 'KexAlgorithms diffie-hellman-group14-sha1' > {drop_in} && systemctl reload ssh")
    try:
        run, sessions = _wd(env)
        assert run.rc == 0 and run.totals["success"] == 0, run.stderr[-3000:]
        assert sessions == 1 and MISS in run.stderr
        assert "key exchange" in next(l for l in run.stderr.splitlines() if MISS in l)
        for s in (ALPHA, BETA):
            sshd(f"curl -sf http://127.0.0.1:{s['port']}/ | grep -qx {s['name']}")
    finally:
        sshd(f"rm -f {drop_in} && systemctl reload ssh")
    _hit(env, host)


BATCHED = {"DockerNetwork", "NetworkReport", "DockerDiskUsage", "RunningContainers",
           "Candidates", "DockerCredHelpers"}


def test_the_plans_python_facts_answer_in_one_process_as_their_own_commands(converged, host):
    """The plan's B line (watchme/fact_batch.py: one python3 for every Python fact) answers
    each fact byte for byte as the fact's own command does when pyinfra reads it live, with
    a rollout candidate on the host so that every fact has something to say."""
    label = "watchme.rollout-candidate=alpha"
    host.run_test(f"docker run -d --name watchme-alpha-candidate --label {label} "
                  f"--network watchme-network {fake_services.IMAGE} /bin/busybox sleep 600")
    try:
        plan = host.check_output(f"cat {wl.PLAN}").split("\n", 1)[1]
        assert plan.startswith("#J [[") and "\nif type B >/dev/null 2>&1 ; then B '" in plan
        words = shlex.split(plan, comments=True)
        batch = json.loads(words[words.index("B", 3) + 1])
        assert {json.loads(i)["fact"][1] for i, _ in batch} == BATCHED
        functions = wl.SCRIPT[wl.SCRIPT.index("F() {{"):wl.SCRIPT.index('if [ "$p" -le 1 ]')]
        functions = functions.format(lock_dir="/run/watchme")
        batched_script = (f"BATCH={shlex.quote(wl.batch_source())}\n{functions}\n"
                          f"B {shlex.quote(json.dumps(batch))}\nW")
        live_script = functions + "\n" + "\n".join(
            f"F 1 {shlex.quote(identity)} {shlex.quote(spec['command'])}" for identity, spec in batch)
        one = host.run(f"sh -c {shlex.quote(batched_script)}")
        live = host.run(f"sh -c {shlex.quote(live_script)}")
        assert one.rc == 0 and live.rc == 0, (one.stderr, live.stderr)
        batched = noop_answers.blocks_from_output(one.stdout)
        assert [b[1] for b in batched] == [i for i, _ in batch], "every fact answered, in order"
        assert noop_answers.canonical(batched) == \
            noop_answers.canonical(noop_answers.blocks_from_output(live.stdout))
        answers = {json.loads(i)["fact"][1]: lines for _, i, lines in batched}
        assert answers["Candidates"][0].startswith("/watchme-alpha-candidate alpha 172.27.")
        assert '"watchme-alpha"' in answers["RunningContainers"][0]
        assert answers["NetworkReport"][-1] == "@@exit=0"
        # The whole plan in one python3 (what the lock command runs: run_plan) answers as
        # the plan's shell lines do (the path of a host without python3).
        source = f"BATCH={shlex.quote(wl.batch_source())}\n"
        run_plan = source + 'python3 -c "$BATCH" plan ' + wl.PLAN
        shell_lines = source + functions + ". " + wl.PLAN
        runner = host.run("sh -c " + shlex.quote(run_plan))
        shell = host.run("sh -c " + shlex.quote(shell_lines))
        assert runner.rc == 0 and shell.rc == 0, (runner.stderr, shell.stderr)
        by_runner = noop_answers.blocks_from_output(runner.stdout)
        assert len(by_runner) == len(noop_memo.planned_commands(plan)) > 20
        assert noop_answers.canonical(by_runner) == \
            noop_answers.canonical(noop_answers.blocks_from_output(shell.stdout))
    finally:
        host.run("docker rm -f watchme-alpha-candidate")


def test_second_run_changes_nothing(converged, deploy, env):
    assert_idempotent(deploy, env={"WATCHME_REGISTRY": env["WATCHME_REGISTRY"]})


def test_fact_record_on_a_hit_is_the_full_runs_format():
    """Built from the plan and its answers: commands spanning lines (with # lines) included."""
    import base64
    import gzip
    import shlex

    command = "sh -c 'x'\n# a comment line inside the command\necho done"
    identity = json.dumps({"fact": ["m", "C", {}, {"_sudo": True}], "sha": "1"})
    plan = ("# watchme fact plan v1: header\n"
            f"F 1 {shlex.quote(identity)} {shlex.quote(command)}\n")
    text = f"{plan}{wl.FACTS}\n{noop_answers.MARK} 0 {identity}\nline 1\nline 2\n"
    blob = base64.b64encode(gzip.compress(text.encode())).decode()
    assert noop_memo.fact_record("h", blob) == {"version": 1, "host": "h", "facts": [
        {"command": command, "executor": {"_sudo": True}, "rc": 0,
         "stdout": ["line 1", "line 2"]}]}


def test_a_miss_names_the_fact_that_changed(tmp_path):
    before = noop_answers.blocks_from_output(_out("t", "a"))
    memo = {"key": "k", "answers": noop_answers.answers_hash(before, "c"), "commit": "c",
            "facts": noop_answers.fact_digests(before)}
    (tmp_path / "memo").write_text(json.dumps(memo))
    (tmp_path / "record").write_text('{"commit": "c"}\n')
    out = tmp_path / "out"
    out.write_text(_out("later", "a"))
    check = lambda: noop_answers.host_check(str(tmp_path / "memo"), str(tmp_path / "record"),
                                            "k", str(out))
    assert check().startswith("hit ")
    out.write_text(_out("t", "b"))
    assert check() == ("miss the host's answers differ from the memoized run's: the answer "
                       "of watchme.units.LoadedUnits differs")
    (tmp_path / "record").write_text('{"commit": "d"}\n')
    assert check().endswith("the last deployed commit differs")


DISK = ('{"fact": ["watchme.disk", "DockerDiskUsage", {"script": "s", "threshold": 85}, {}], '
        '"sha": "3"}')


def _disk(percent: int) -> list:
    return [(0, DISK, ["{", '  "root": "/var/lib/docker",', f'  "percent": {percent},',
                       f'  "percent_after": {percent},', '  "error": null', "}"])]


def test_the_disk_percent_counts_only_as_below_the_threshold_or_not():
    h = lambda p: noop_answers.answers_hash(_disk(p), "c")
    assert h(27) == h(28) == h(84)
    assert h(84) != h(85)


def test_the_deploy_reads_the_disk_percent_only_against_the_threshold():
    """What COARSE keeps is all the deploy decides on: every read of "percent" in tasks/ and
    watchme/ is `is not None`, `< threshold`, or text in an f-string."""
    allowed = re.compile(r"""\.get\("percent"\) is not None|\["percent"\] < threshold|"""
                         r"""\{\w+\['percent(?:_after)?'\]\}""")
    for path in [*ROOT.glob("tasks/*.py"), *ROOT.glob("watchme/*.py")]:
        if path.name in ("noop_answers.py", "doctor.py"):  # doctor is no part of a deploy
            continue
        for line in path.read_text().splitlines():
            for read in re.finditer(r"""\[["']percent(?:_after)?["']\]|\.get\(["']percent""", line):
                assert allowed.search(line), f"{path.name}: {line.strip()}"


def test_a_files_times_are_no_answer():
    ident = '{"fact": ["pyinfra.facts.files", "Directory", {"path": "/var/lib/watchme"}, {}], "sha": "4"}'
    stat = "user=root group=root mode=drwxr-xr-x atime={0} mtime={0} ctime={0} size=4096 '/var/lib/watchme'"
    h = lambda t, mode="drwxr-xr-x": noop_answers.answers_hash(
        [(0, ident, [stat.format(t).replace("drwxr-xr-x", mode)])], "c")
    assert h(1700000000) == h(1700000999)
    assert h(1) != h(1, "drwx------")
    used = re.compile(r"""\[["'][amc]time["']\]|cache_time|files\.download""")
    for path in [*ROOT.glob("tasks/*.py"), *ROOT.glob("watchme/*.py"), ROOT / "deploy.py"]:
        if path.name not in ("noop_answers.py", "doctor.py"):
            assert not used.search(path.read_text()), path


def test_a_unit_counts_only_as_running_or_not_and_enabled_or_not():
    """The guard's oneshot service goes dead -> start -> dead as its timer runs it: no miss.
    A unit that stops running, or is disabled, is one (LoadedUnits' process() reads exactly
    these: noop_answers' RUNNING and ENABLED are the ones watchme/units.py decides with)."""
    ident = json.dumps({"fact": ["watchme.units", "LoadedUnits", {"units": ["a"]}, {}], "sha": "u"})

    def h(sub="dead", file="static", reload="no", active="inactive"):
        return noop_answers.answers_hash([(0, ident, [
            "Id=watchme-guard.service", f"NeedDaemonReload={reload}", f"ActiveState={active}",
            f"SubState={sub}", f"UnitFileState={file}", ""])], "c")
    assert h("dead") == h("start", active="activating") == h("failed", active="failed")
    assert h("running", "enabled") == h("waiting", "static")
    assert h("running") != h("dead")
    assert h(file="enabled") != h(file="disabled")
    assert h(reload="yes") != h()
    from watchme import units
    assert units.RUNNING is noop_answers.RUNNING and units.ENABLED is noop_answers.ENABLED
    facts = units.LoadedUnits().process(["Id=x.service", "NeedDaemonReload=no", "SubState=start",
                                         "UnitFileState=static", ""])
    assert facts["x.service"]["running"] is False and facts["x.service"]["enabled"] is True
