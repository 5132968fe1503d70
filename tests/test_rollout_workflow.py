"""deploy.yml's rollout mode (issue 12 §2): `watchme rollout` from a manual run of main.

The mode is a workflow_dispatch with `service` (and optionally `image`): the same job, ref
rule, production environment, secrets, concurrency group and lock wait as the deploy; the
deploy and the fact upload are skipped. The job's steps are run as GitHub runs them
(tests/test_workflows.py run_job) against a real test host: a bad input ends with the
rollout's own error, exit 2, before anything on the host changes. The rollout itself (good
image live, bad images rejected or rolled back) is tests/test_rollout.py.
"""

from __future__ import annotations

import yaml

from tests.conftest import ROOT
from tests.test_workflows import _secrets, run_job

WORKFLOW = ROOT / ".github" / "workflows" / "deploy.yml"


def _job() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["deploy"]


def test_rollout_mode_is_a_step_of_the_main_only_production_job():
    job = _job()
    assert job["environment"] == "production" and job["if"] == "github.ref == 'refs/heads/main'"
    steps = {s.get("name", s.get("uses")): s for s in job["steps"]}
    roll = steps["Roll out one service (watchme rollout --json)"]
    assert roll["if"] == "inputs.service != ''"
    assert roll["env"]["SERVICE"] == "${{ inputs.service }}" and roll["env"]["IMAGE"] == "${{ inputs.image }}"
    assert '.venv/bin/watchme rollout "$SERVICE" ${IMAGE:+--image "$IMAGE"} --json' in roll["run"]
    assert "--data lock_wait_seconds=600" in roll["run"]
    # a rollout neither deploys nor replaces the fact records of the last deploy
    assert steps["Deploy (watchme deploy --json -y) and summarise"]["if"] == "inputs.service == ''"
    assert steps["Keep the recorded facts for pull-request previews"]["if"] == "inputs.service == ''"
    # the ref check and the key step run in both modes
    assert "if" not in steps["Refuse any ref but main"]
    assert "if" not in steps["Write the SSH key and known_hosts from the secret store"]


def test_an_unknown_service_is_refused_on_the_host_untouched(testhost, host, tmp_path):
    before = host.run("ls -A /var/lib/watchme 2>/dev/null; ls /opt/watchme 2>/dev/null").stdout
    rc, output, summary = run_job("deploy.yml", "deploy", _secrets(testhost), tmp_path,
                                  inputs={"service": "nope"})
    assert rc == 2, output[-3000:]
    assert "no service 'nope' in the registry" in output
    assert "## Deploy (watchme deploy" not in output  # the deploy step did not run
    assert "### Rollout of nope to production" in summary
    assert host.run("ls -A /var/lib/watchme 2>/dev/null; ls /opt/watchme 2>/dev/null").stdout == before


def test_an_image_reference_never_reaches_a_shell(testhost, host, tmp_path):
    canary = "/tmp/watchme-rollout-canary"
    rc, output, _ = run_job("deploy.yml", "deploy", _secrets(testhost), tmp_path,
                            inputs={"service": "nope", "image": f"x$(touch {canary})"})
    assert rc == 2, output[-3000:]
    assert "rollout:" in output and "## Deploy (watchme deploy" not in output
    assert host.run(f"test -e {canary}").rc == 1
    assert not (tmp_path / "runner").joinpath(canary.lstrip("/")).exists()
