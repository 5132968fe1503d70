"""ECR through the credential helper (tasks/images.py, watchme/images.py) and the host's pull
check (files/pull_check.py): settings, the config merge, the operation pyinfra's way, the
failure classifier on real error text, and end to end on a test host.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys

import pytest

from tests import fake_services
from tests.conftest import ROOT, assert_idempotent
from tests.pyinfra_fake import run_op
from watchme import images

pytestmark = pytest.mark.provisioned  # e2e hosts: packages preinstalled (tests/provisioned.py)

ECR = "754724220380.dkr.ecr.ap-southeast-2.amazonaws.com"

spec = importlib.util.spec_from_file_location("pull_check", ROOT / "files" / "pull_check.py")
pull_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pull_check)


# --- settings ------------------------------------------------------------------------------

def test_seed_registry_and_region_are_accepted():
    assert images.check_settings(ECR, "ap-southeast-2") == []


@pytest.mark.parametrize("registry, region, says", [
    (f"https://{ECR}", "ap-southeast-2", "ecr_registry: "),
    (f"{ECR}/watchme", "ap-southeast-2", "ecr_registry: "),
    ("registry.example.com", "ap-southeast-2", "ecr_registry: "),
    (ECR, "us-east-1", "ecr_region: 'us-east-1' differs from the region in ecr_registry (ap-southeast-2)"),
])
def test_bad_settings_name_the_field_and_the_fix(registry, region, says):
    problems = images.check_settings(registry, region)
    assert len(problems) == 1 and says in problems[0]


# --- the config merge (run here, on a temporary file, as root runs it on the host) ---------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the merge chowns to root")


def _merge(path):
    subprocess.run(["sh", "-c", images.merge_config_command(ECR, str(path))], check=True)
    return json.loads(path.read_text())


def _read(path):
    out = subprocess.run(["sh", "-c", images.read_config_command(str(path))], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


@needs_root
def test_merge_keeps_other_keys_and_is_0600(tmp_path):
    path = tmp_path / ".docker" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"auths": {"ghcr.io": {"auth": "c2VjcmV0"}},
                                "credHelpers": {"gcr.io": "gcloud"}, "detachKeys": "ctrl-e,e"}))
    path.chmod(0o644)
    assert images.config_ok(_read(path), ECR) == [
        f"credHelpers[{ECR}] is None", "mode 644 owner 0:0"]
    doc = _merge(path)
    assert doc == {"auths": {"ghcr.io": {"auth": "c2VjcmV0"}}, "detachKeys": "ctrl-e,e",
                   "credHelpers": {"gcr.io": "gcloud", ECR: "ecr-login"}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    found = _read(path)
    assert "auths" not in json.dumps(found)  # the fact never carries secrets off the host
    assert images.config_ok(found, ECR) == []


@needs_root
def test_merge_creates_a_missing_file_and_replaces_junk(tmp_path):
    path = tmp_path / "d" / "config.json"
    assert images.config_ok(_read(path), ECR) == ["missing"]
    assert _merge(path) == {"credHelpers": {ECR: "ecr-login"}}
    path.write_text("{not json")
    assert images.config_ok(_read(path), ECR)[0].startswith("not a JSON object")
    assert _merge(path) == {"credHelpers": {ECR: "ecr-login"}}


# --- the operation, facts in, commands out ------------------------------------------------

def test_operation_is_a_noop_when_configured():
    from tasks.images import docker_cred_helper
    found = {"exists": True, "valid": True, "credHelpers": {ECR: "ecr-login"}, "mode": "600",
             "uid": 0, "gid": 0}
    cmds, host = run_op(docker_cred_helper, {"DockerCredHelpers": found}, registry=ECR)
    assert cmds == [] and host.noops == [f"/root/.docker/config.json: credHelpers[{ECR}] = ecr-login"]


def test_operation_merges_on_the_host_when_the_helper_is_not_named():
    from tasks.images import docker_cred_helper
    found = {"exists": True, "valid": True, "credHelpers": {}, "mode": "600", "uid": 0, "gid": 0}
    cmds, _ = run_op(docker_cred_helper, {"DockerCredHelpers": found}, registry=ECR)
    assert cmds == [images.merge_config_command(ECR)]
    assert cmds[0].startswith("python3 -c ") and cmds[0].endswith(f"/root/.docker/config.json {ECR} ecr-login")


# --- the classifier, on real text ----------------------------------------------------------

REAL = [
    # seed, "ECR認証エラー"
    ("pull access denied ... may require 'docker login': denied: Your authorization token has expired",
     "unauthorized"),
    ("Error response from daemon: pull access denied for 754724220380.dkr.ecr.ap-southeast-2.amazonaws.com/"
     "watchme-api, repository does not exist or may require 'docker login': denied: Your authorization "
     "token has expired. Reauthenticate and try again.", "unauthorized"),
    # docker 20.10 against a registry that wants credentials it did not get
    ('Error response from daemon: Head "http://127.0.0.1:5000/v2/app/manifests/v9": no basic auth credentials',
     "unauthorized"),
    # docker CLI with credHelpers naming a missing binary
    ('error getting credentials - err: exec: "docker-credential-ecr-login": executable file not found '
     'in $PATH, out: ``', "helper_missing"),
    # docker-compose 1.29 (docker-py) with the same
    ("docker.credentials.errors.InitializationError: docker-credential-ecr-login not installed or not "
     "available in PATH", "helper_missing"),
    # docker-credential-ecr-login 0.6.0: stdout, then its log (no instance role)
    ("credentials not found in native keychain | time=\"2026-11-30T06:25:36Z\" level=error msg=\"Error "
     "retrieving credentials\" error=\"ecr: Failed to get authorization token: operation error ECR: "
     "GetAuthorizationToken, failed to sign request: failed to retrieve credentials: failed to refresh "
     "cached credentials, no EC2 IMDS role found, operation error ec2imds: GetMetadata, access disabled "
     "to EC2 IMDS via client option, or \\\"AWS_EC2_METADATA_DISABLED\\\" environment variable\"",
     "no_credentials"),
    ("Error response from daemon: manifest for 127.0.0.1:5000/app:v9 not found: manifest unknown: "
     "manifest unknown", "not_found"),
    ("Error response from daemon: repository 754724220380.dkr.ecr.ap-southeast-2.amazonaws.com/nope not "
     "found: name unknown: The repository with name 'nope' does not exist in the registry with id "
     "'754724220380'", "not_found"),
    ('Error response from daemon: Get "http://127.0.0.1:5001/v2/": dial tcp 127.0.0.1:5001: connect: '
     'connection refused', "network"),
    ('Error response from daemon: Get "https://754724220380.dkr.ecr.ap-southeast-2.amazonaws.com/v2/": '
     'dial tcp: lookup 754724220380.dkr.ecr.ap-southeast-2.amazonaws.com: Temporary failure in name '
     'resolution', "network"),
    ("something nobody has seen", "unknown"),
]


@pytest.mark.parametrize("text, cause", REAL)
def test_classifier_on_real_errors(text, cause):
    assert pull_check.classify(text) == cause
    assert pull_check.FIXES[cause]


def test_registry_of_an_image():
    assert pull_check.registry_of(f"{ECR}/watchme-api:latest") == ECR
    assert pull_check.registry_of("127.0.0.1:5000/app:v1") == "127.0.0.1:5000"
    assert pull_check.registry_of("redis:7") == "docker.io"


# --- image references ----------------------------------------------------------------------

def test_repository_and_pin():
    assert images.repository("127.0.0.1:5000/app:v2") == "127.0.0.1:5000/app"
    assert images.repository(f"{ECR}/a@sha256:{'b' * 64}") == f"{ECR}/a"
    digest = f"127.0.0.1:5000/app@sha256:{'c' * 64}"
    assert images.pin_for("127.0.0.1:5000/app:v1", "sha256:" + "d" * 64, [digest]) == digest
    assert images.pin_for("local:1", "sha256:" + "d" * 64, []) == "sha256:" + "d" * 64


@pytest.mark.parametrize("ref", ["app; rm -rf /", "a b", "https://x/y", "x\n  command: sh"])
def test_bad_image_refs_are_refused(ref):
    with pytest.raises(ValueError, match="--image"):
        images.check_ref(ref)


def test_rollout_refuses_a_bad_ref_before_any_host(capsys):
    from watchme import rollout
    assert rollout.main(["app", "--image", "x;reboot"]) == 2
    assert "--image 'x;reboot': not an image reference" in capsys.readouterr().err


# --- end to end ----------------------------------------------------------------------------

ALPHA = {"name": "alpha", "container": "watchme-alpha", "ip": "172.27.0.6", "port": 8000}


@pytest.fixture(scope="module")
def env(tmp_path_factory, testhost_env):
    return {**testhost_env, "WATCHME_REGISTRY": fake_services.registry(
        tmp_path_factory.mktemp("reg") / "r.yaml", [ALPHA])}


@pytest.fixture(scope="module")
def deployed(deploy, env, host):
    fake_services._run(host, "mkdir -p /root/.docker && printf '%s' "
                             "'{\"auths\": {\"ghcr.io\": {\"auth\": \"c2VjcmV0\"}}}' > /root/.docker/config.json"
                             " && chmod 644 /root/.docker/config.json")
    run = deploy(env=env)
    assert run.rc == 0, run.stderr[-3000:]
    return run


def test_root_docker_config_names_the_helper(deployed, host):
    f = host.file("/root/.docker/config.json")
    assert (f.user, f.group, f.mode) == ("root", "root", 0o600)
    assert json.loads(f.content_string) == {"auths": {"ghcr.io": {"auth": "c2VjcmV0"}},
                                            "credHelpers": {ECR: "ecr-login"}}


def _pull_check(host) -> dict:
    host.run("mkdir -p /tmp/pc")
    script = (ROOT / "files" / "pull_check.py").read_text()
    fake_services._run(host, f"cat > /tmp/pc/pull_check.py <<'END_OF_SCRIPT'\n{script}END_OF_SCRIPT\n")
    # No traffic leaves the test host: the ECR names resolve to 127.0.0.1, IMDS is disabled.
    r = host.run(f"AWS_EC2_METADATA_DISABLED=true python3 /tmp/pc/pull_check.py --json "
                 f"--registry {ECR} --region ap-southeast-2 {ECR}/watchme-api:latest")
    assert r.rc == 1, r.stdout + r.stderr
    return json.loads(r.stdout)


def test_pull_check_names_no_credentials_then_helper_missing(deployed, host):
    fake_services._run(host, f"grep -q {ECR} /etc/hosts || echo '127.0.0.1 {ECR} "
                             "api.ecr.ap-southeast-2.amazonaws.com' >> /etc/hosts; "
                             "command -v docker-credential-ecr-login >/dev/null || "
                             "DEBIAN_FRONTEND=noninteractive apt-get install -y -q amazon-ecr-credential-helper >/dev/null")
    r = _pull_check(host)
    assert (r["step"], r["cause"]) == ("helper", "no_credentials"), r
    assert "IAM role" in r["fix"]
    binary = host.check_output("command -v docker-credential-ecr-login")
    fake_services._run(host, f"mv {binary} /root/ecr-login.hidden")
    try:
        r = _pull_check(host)
        assert (r["cause"], r["fix"]) == ("helper_missing", pull_check.FIXES["helper_missing"]), r
    finally:
        fake_services._run(host, f"mv /root/ecr-login.hidden {binary}")


def test_idempotent(deployed, deploy, env):
    assert_idempotent(deploy, env=env)


def test_rollout_probe_goes_through_nginx_with_sni_or_http():
    from types import SimpleNamespace
    from watchme.rollout import probe_command
    svc = SimpleNamespace(probe_url_path="/app/status")
    https = probe_command({"server_name": "api.hey-watch.me"}, svc)
    assert "--resolve api.hey-watch.me:443:127.0.0.1 https://api.hey-watch.me/app/status" in https
    http = probe_command({"http_only": True, "server_name": "api.hey-watch.me"}, svc)
    assert "-H 'Host: api.hey-watch.me' http://127.0.0.1/app/status" in http
