"""The bootstrap on a server someone else set up (issue 15 §2): it keeps what it finds.

One real test host carries every variant at once (tests/variants/hand-built.sh): Docker's
own docker-ce + containerd.io package records around a working engine, a standalone compose
in /usr/local/bin, nginx.org's conf.d-only layout, certbot from a snap, an apt without the
ECR credential helper, and a running container. The deploy must install nothing over them,
restart nothing, point the units at the compose it found, and change nothing the second time.

The variant host is an image derived once per machine (docker commit, tagged by a hash of
the base image and the script), so the module pays the apt installs only the first time.
"""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import assert_idempotent
from tests.test_bootstrap import assert_profile_read_once
from watchme import testhost as th

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).parent / "variants" / "hand-built.sh"
# Every package a wrong bootstrap would install, replace or remove on this host.
WATCHED = ["docker-ce", "containerd.io", "docker.io", "containerd", "runc", "docker-compose",
           "docker-compose-v2", "docker-compose-plugin", "nginx", "nginx-common", "certbot",
           "amazon-ecr-credential-helper"]
COMPOSE = "/usr/local/bin/docker-compose"


def _variant_image() -> str:
    base = th.build_image()
    digest = hashlib.sha256(base.encode() + SCRIPT.read_bytes()).hexdigest()[:12]
    tag = f"watchme-testhost-handbuilt:{digest}"
    if th.image_exists(tag):
        return tag
    with open(th.CACHE_DIR / "handbuilt.lock", "w") as lock:  # parallel workers build once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not th.image_exists(tag):
            _build_variant(base, tag)
    return tag


def _build_variant(base: str, tag: str) -> None:
    builder = th.start(image=base)
    try:
        subprocess.run(["docker", "exec", "-i", builder.name, "sh", "-s"], check=True,
                       stdin=SCRIPT.open("rb"), capture_output=True)
        # Stopped cleanly (the container comes back with the engine); no keys baked in.
        subprocess.run(["docker", "exec", builder.name, "sh", "-c",
                        "systemctl stop docker.service docker.socket containerd.service && "
                        "rm -rf /var/lib/docker /var/lib/containerd /etc/ssh/ssh_host_* "
                        "/home/ubuntu/.ssh/authorized_keys"],
                       check=True, capture_output=True)
        subprocess.run(["docker", "commit", builder.name, tag], check=True, capture_output=True)
    finally:
        th.stop(builder.name)


@pytest.fixture(scope="module")
def testhost():
    """This module's host: the hand-built variant instead of the bare image."""
    host = th.start(image=_variant_image())
    yield host
    th.stop(host.name)


def _dpkg(host) -> dict[str, str]:
    out = host.run("dpkg-query -W -f='${Package} ${db:Status-Abbrev} ${Version}\\n' "
                   + " ".join(WATCHED) + " 2>/dev/null").stdout
    return {line.split()[0]: line for line in out.splitlines() if line.strip()}


def _engine_state(host) -> tuple[str, str]:
    """(dockerd's pid, the sentinel container's StartedAt): both change on any restart."""
    pid = host.check_output("systemctl show -p MainPID --value docker.service")
    started = host.check_output("docker inspect -f '{{.State.StartedAt}}' sentinel")
    return pid, started


# A running container (an image made from busybox-static: no registry here) whose start
# time must survive the deploy.
SENTINEL = ("mkdir -p /root/img/bin && cp /bin/busybox /root/img/bin/busybox && "
            "tar -C /root/img -c . | docker import - watchme-sentinel:1 >/dev/null && "
            "docker run -d --name sentinel --restart unless-stopped watchme-sentinel:1 "
            "/bin/busybox sleep 1000000")


@pytest.fixture(scope="module")
def before(host):
    deadline = time.monotonic() + 60
    while not host.run("docker info").succeeded:
        assert time.monotonic() < deadline, "the variant host's engine did not come up"
        time.sleep(0.5)
    host.run_expect([0], SENTINEL)
    return {"dpkg": _dpkg(host), "engine": _engine_state(host),
            "compose_sha": host.file(COMPOSE).sha256sum,
            "certbot_sha": host.file("/snap/bin/certbot").sha256sum}


@pytest.fixture(scope="module")
def first_run(before, deploy):
    run = deploy()
    assert run.rc == 0, run.stderr[-3000:]
    return run


def test_the_host_carries_the_variants(before):
    installed = {name for name, line in before["dpkg"].items() if line.split()[1] == "ii"}
    assert {"docker-ce", "containerd.io", "nginx"} <= installed
    assert not installed & {"docker.io", "containerd", "runc", "docker-compose", "certbot"}


def test_nothing_installed_over_them(before, first_run, host):
    assert _dpkg(host) == before["dpkg"]
    assert host.file(COMPOSE).sha256sum == before["compose_sha"]
    assert host.file("/snap/bin/certbot").sha256sum == before["certbot_sha"]


def test_only_what_was_missing_is_installed_in_one_apt_run(first_run, host):
    installs = [n for n in first_run.changed() if n.startswith("Install ") and "/" not in n
                and n != "Install nginx-safe-apply"]
    assert installs == ["Install curl"]  # curl is the one thing this host lacked
    assert host.package("curl").is_installed


def test_found_forms_are_reported(first_run):
    assert ("bootstrap: found engine docker-ce, compose /usr/local/bin/docker-compose, "
            "nginx /usr/sbin/nginx (conf.d), certbot /snap/bin/certbot; install curl"
            in first_run.stderr)


def test_ecr_helper_unavailable_is_warned_and_skipped(first_run, host):
    assert ("amazon-ecr-credential-helper is not in this release's apt lists and "
            "docker-credential-ecr-login is not on PATH: skipped") in first_run.stderr
    assert not host.package("amazon-ecr-credential-helper").is_installed


def test_no_engine_or_container_restart(before, first_run, host):
    assert _engine_state(host) == before["engine"]
    assert host.service("docker").is_running and host.service("docker").is_enabled


def test_units_use_the_detected_compose_path(first_run, host):
    lines = host.check_output("grep -h '^Exec' /etc/systemd/system/*.service").splitlines()
    compose = [line for line in lines if " -f " in line and line.endswith(" up")]
    assert compose, lines
    assert all(line.startswith(f"ExecStart={COMPOSE} -f ") for line in compose), compose


def test_site_included_from_conf_d(first_run, host):
    """nginx.org's layout keeps its shape: the site comes in through conf.d/*.conf."""
    assert not host.file("/etc/nginx/sites-enabled").exists
    assert not host.file("/etc/nginx/sites-available").exists
    dump = host.check_output("nginx -T 2>/dev/null")
    assert "# configuration file /etc/nginx/conf.d/" in dump
    assert "server_name api.hey-watch.me" in dump
    assert host.service("nginx").is_running


def test_profile_read_once_and_nothing_changes_the_second_time(first_run, deploy, host, before):
    runs = []

    def debug_deploy(**kw):
        runs.append(deploy("--debug", **kw))
        return runs[-1]

    assert_idempotent(debug_deploy)
    assert_profile_read_once(host, runs[0])
    assert _dpkg(host) == before["dpkg"]
    assert _engine_state(host) == before["engine"]
