"""tasks/bootstrap.py on a fresh real host: systemd + sshd + sudo + python3, nothing else."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from tests.conftest import WATCHME, assert_idempotent, run_deploy
from watchme import noop_memo

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def first_run(deploy, host):
    assert not host.package("nginx").is_installed, "the test host must start bare"
    run = deploy()
    assert run.rc == 0, run.stderr[-3000:]
    return run


INSTALL = "Install nginx, docker.io, curl, docker-compose, certbot, amazon-ecr-credential-helper"


def test_first_run_changes_the_bare_host(first_run):
    changed = first_run.changed()
    assert any(c.startswith("Write the rendered files (one bundle upload)") for c in changed)  # the config root too


def test_everything_missing_installed_in_one_apt_run(first_run, host):
    """Issue 13: one `apt-get install`; the empty lists were refreshed once, by the fact."""
    installs = [n for n in first_run.changed() if n.startswith("Install ") and "/" not in n]
    assert installs == [INSTALL]
    assert "Refresh apt package lists" not in first_run.changed()
    for package in INSTALL.removeprefix("Install ").split(", "):
        assert host.package(package).is_installed, package
    assert ("bootstrap: found nothing to keep; install nginx, docker.io, curl, docker-compose, "
            "certbot, amazon-ecr-credential-helper") in first_run.stderr


def test_units_use_the_installed_compose(first_run, host):
    lines = host.check_output("grep -h '^Exec' /etc/systemd/system/*.service").splitlines()
    compose = [line for line in lines if " -f " in line and line.endswith(" up")]
    assert compose and all(l.startswith("ExecStart=/usr/bin/docker-compose -f ") for l in compose)


@pytest.mark.parametrize("service", ["nginx", "docker"])
def test_service_active_and_enabled(first_run, host, service):
    svc = host.service(service)
    assert svc.is_running
    assert svc.is_enabled


def test_docker_engine_answers(first_run, host):
    assert host.run("docker info --format '{{.ServerVersion}}'").rc == 0
    assert host.socket("unix:///run/docker.sock").is_listening


def test_nginx_listens(first_run, host):
    assert host.socket("tcp://0.0.0.0:80").is_listening


def test_deploy_user_in_docker_group(first_run, host):
    assert "docker" in host.user("ubuntu").groups


def test_compose_installed_as_detected(first_run, host):
    # Debian bookworm ships compose v1 as `docker-compose`; the fact picked it.
    out = host.check_output("/usr/bin/docker-compose version --short")
    assert out.startswith("1.")


def test_swap_skip_reported_on_a_container(first_run, host):
    assert "swap: skipped, a docker container cannot enable swap" in first_run.stderr
    assert not host.file("/swapfile").exists


def test_config_root_owner_and_mode(first_run, host):
    root = host.file("/opt/watchme")
    assert root.is_directory
    assert (root.user, root.group, root.mode) == ("root", "root", 0o755)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wrong_key_is_one_line_error(first_run, testhost, tmp_path):
    key = tmp_path / "wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    run = run_deploy({"WATCHME_HOSTS": f"ubuntu@127.0.0.1:{testhost.port}",
                      "WATCHME_SSH_KEY": str(key), "WATCHME_KNOWN_HOSTS": testhost.known_hosts},
                     tool=WATCHME)
    assert run.rc != 0
    assert run.last_line.startswith(f"deploy failed: 127.0.0.1:{testhost.port}: Authentication error")


def test_unknown_host_key_is_refused(first_run, testhost, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    run = run_deploy({"WATCHME_HOSTS": f"ubuntu@127.0.0.1:{testhost.port}",
                      "WATCHME_SSH_KEY": testhost.key, "WATCHME_KNOWN_HOSTS": str(empty)},
                     tool=WATCHME)
    assert run.rc != 0
    assert f"127.0.0.1:{testhost.port}: SSH error (StrictPolicy: No host key" in run.last_line


def test_unreachable_host_is_one_line_error(first_run, testhost):
    port = _free_port()
    run = run_deploy({"WATCHME_HOSTS": f"ubuntu@127.0.0.1:{port}", "WATCHME_SSH_KEY": testhost.key,
                      "WATCHME_KNOWN_HOSTS": testhost.known_hosts}, tool=WATCHME)
    assert run.rc != 0
    assert run.last_line.startswith(f"deploy failed: 127.0.0.1:{port}: Could not connect")


def test_operator_env_form_works(first_run, testhost):
    """The README's production form, pointed at the test host: key + known_hosts only. The
    production group pulls images (no registry here), so the run says what the test host has."""
    run = run_deploy({"WATCHME_HOSTS": f"ubuntu@127.0.0.1:{testhost.port}",
                      "WATCHME_SSH_KEY": testhost.key, "WATCHME_KNOWN_HOSTS": testhost.known_hosts},
                     "--json", "--data", "compose_pull=false")
    assert run.rc == 0, run.stderr[-2000:]
    assert run.totals["success"] == 0


def test_unsupported_distro_refused_before_any_change(first_run, deploy, host):
    host.run("cp --remove-destination /usr/lib/os-release /tmp/os-release.keep && "
             "rm /etc/os-release && printf 'ID=alpine\\nPRETTY_NAME=\"Alpine Linux v3.20\"\\n'"
             " > /etc/os-release && rm -rf /opt/watchme")
    try:
        run = deploy()
        assert run.rc != 0
        assert "unsupported distro Alpine Linux v3.20" in run.last_line
        assert "127.0.0.1:" in run.last_line
        assert not host.file("/opt/watchme").exists, "changed the host"
    finally:
        host.run("rm /etc/os-release && ln -s ../usr/lib/os-release /etc/os-release")


def test_no_sudo_refused_before_any_change(first_run, deploy, host, testhost):
    host.run("mv /etc/sudoers.d/90-ubuntu /root/90-ubuntu && rm -rf /opt/watchme")
    try:
        run = deploy()
        assert run.rc != 0
        assert run.last_line.endswith(
            f"127.0.0.1:{testhost.port}: user ubuntu cannot sudo without a password; fix: "
            "give the deploy user passwordless sudo (as `ubuntu` has on EC2)")
    finally:
        # Without sudo, testinfra (which logs in as ubuntu) cannot undo this: use docker.
        subprocess.run(["docker", "exec", testhost.name, "mv", "/root/90-ubuntu",
                        "/etc/sudoers.d/90-ubuntu"], check=True)
    assert not host.file("/opt/watchme").exists, "changed the host"


def test_second_run_changes_nothing(first_run, deploy):
    """Runs last: the earlier error tests removed the config root, so converge, then gate."""
    assert deploy().rc == 0
    assert_idempotent(deploy)


def test_noop_deploy_batches_its_facts(first_run, deploy, testhost_env, host):
    """watchme/prefetch.py (README "Performance"): a no-op deploy costs two remote commands,
    lock + facts, and release + record + plan, not ~200."""
    warm = deploy()  # a no-op that records the fact plan of a converged run on the host
    assert warm.rc == 0 and warm.changed() == [], warm.changed()
    run = run_deploy(testhost_env, "--debug")
    assert run.rc == 0
    commands = run.stderr.count("Running command on ")
    assert "prefetched" in run.stderr
    assert commands == 2, f"{commands} remote commands for a no-op deploy"
    assert_profile_read_once(host, run)


def assert_profile_read_once(host, run) -> None:
    """The host profile (preflight, memory, swap, what is installed) runs once per deploy
    (issue 9): on a no-op, as one fact of the plan in the lock's round trip, never live."""
    assert 'echo "swap_file_bytes=' not in run.stderr  # the script, sent as its own command
    plan = host.check_output("cat /var/lib/watchme/fact-plan.sh")
    planned = [json.loads(identity)["fact"][1]
               for identity, _ in noop_memo.planned_commands(plan.split("\n", 1)[1])]
    assert planned.count("HostProfile") == 1, planned
