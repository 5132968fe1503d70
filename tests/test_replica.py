"""The production replica is the server the seed describes (tests/replica/)."""

from __future__ import annotations

import pytest

from tests import replica
from tests.replica.fixture import testhost  # noqa: F401  (this module's host is a replica)

pytestmark = pytest.mark.e2e
SERVICES = replica.services()


def curl(host, path: str, scheme: str = "https", extra: str = "") -> tuple[int, str]:
    r = host.run(replica.curl_command(path, scheme) + extra)
    assert r.rc == 0, r.stderr
    body, _, code = r.stdout.rpartition("\n")
    return int(code), body.strip()


def test_seed_containers_run_on_watchme_network_at_the_seed_ips(host):
    on_net = {s.container: s.ip for s in SERVICES if s.ip}
    assert len(on_net) == 13
    r = host.run("docker network inspect watchme-network -f "
                 "'{{range .Containers}}{{.Name}}={{.IPv4Address}} {{end}}'")
    assert r.rc == 0, r.stderr
    live = dict(pair.split("=") for pair in r.stdout.split())
    assert {name: ip.split("/")[0] for name, ip in live.items()} == on_net
    subnet = host.check_output("docker network inspect watchme-network "
                               "-f '{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}'")
    assert subnet == "172.27.0.0/16 172.27.0.1"


def test_every_container_is_started_by_its_unit_through_compose(host):
    for s in SERVICES:
        assert host.service(f"{s.unit}.service").is_running, s.unit
        labels = host.check_output(
            "docker inspect -f '{{index .Config.Labels \"com.docker.compose.project.config_files\"}} "
            "{{.State.Running}} {{.Config.Image}}' " + s.container)
        assert labels == f"{s.compose_file} true {s.image_ref}"
        unit = host.check_output(f"systemctl cat {s.unit}.service")
        assert f"ExecStartPre=-/usr/bin/docker-compose -f {s.compose_file} pull -q" in unit
        assert "Requires=docker.service watchme-infrastructure.service" in unit
    assert host.service("watchme-infrastructure.service").is_running
    assert host.check_output("docker inspect -f '{{.HostConfig.Memory}}' api-transcriber") == str(1 << 30)


def test_every_route_answers_over_https_with_its_internal_path(host):
    for s in SERVICES:
        code, body = curl(host, s.public_path)
        assert (code, body) == (200, s.answer), s.public_path
    # the seed's lesson: the scheduler answers only under /api/scheduler/
    assert curl(host, "/scheduler/")[1] == "watchme-scheduler-prod /api/scheduler/"
    assert host.run("curl -s -o /dev/null -w '%{http_code}' http://localhost:8015/").stdout == "404"
    for path, answer in replica.EXTRA_ROUTES.items():
        assert curl(host, path) == (200, answer), path


def test_http_redirects_to_https(host):
    r = host.run(f"curl -s -o /dev/null -w '%{{http_code}} %{{redirect_url}}' "
                 f"--resolve {replica.SITE}:80:127.0.0.1 http://{replica.SITE}/scheduler/x")
    assert r.stdout == f"301 https://{replica.SITE}/scheduler/x"


def test_tls_serves_the_certificate_certbot_keeps(host):
    subject = host.check_output(
        f"echo | openssl s_client -connect 127.0.0.1:443 -servername {replica.SITE} 2>/dev/null "
        "| openssl x509 -noout -subject")
    assert "CN = api.hey-watch.me" in subject
    live = host.file(f"/etc/letsencrypt/live/{replica.SITE}/fullchain.pem")
    assert live.is_symlink and live.linked_to.endswith("archive/api.hey-watch.me/fullchain1.pem")


def test_the_clone_is_a_clean_git_repo_owned_by_ubuntu_and_linked_into_etc(host):
    clone = host.file(replica.CLONE)
    assert clone.user == "ubuntu" and clone.group == "ubuntu"
    assert host.run(f"find {replica.CLONE} ! -user ubuntu").stdout == ""
    git = f"sudo -u ubuntu git -C {replica.CLONE}"
    assert host.check_output(f"{git} status --porcelain") == ""
    assert host.check_output(f"{git} rev-list --count HEAD") == "1"
    site = host.file(f"/etc/nginx/sites-available/{replica.SITE}")
    assert site.is_symlink and site.linked_to == f"{replica.CLONE}/sites-available/{replica.SITE}"
    assert host.file(f"/etc/nginx/sites-enabled/{replica.SITE}").linked_to == site.linked_to
    unit = host.file("/etc/systemd/system/watchme-scheduler.service")
    assert unit.is_symlink and unit.linked_to == f"{replica.CLONE}/systemd/watchme-scheduler.service"
    assert "location = /health" in site.content_string and "location /status/" in site.content_string


def test_the_operators_crontab_line(host):
    tab = host.check_output("crontab -l -u ubuntu")
    assert f"*/5 * * * * {replica.CLONE}/scripts/check-infrastructure.sh" in tab.splitlines()
    assert host.service("cron").is_running
    r = host.run(f"sudo -u ubuntu {replica.CLONE}/scripts/check-infrastructure.sh")
    assert r.rc == 0 and "13" in r.stdout
    r = host.run(f"sudo -u ubuntu python3 {replica.CLONE}/scripts/network_monitor.py --json")
    assert r.rc == 0 and '"missing": []' in r.stdout
