"""tasks/nginx.py on a real host: routes through the real Nginx to stub upstreams.

The host starts as the seed's hand-managed server (a regular site file in
sites-available, linked from sites-enabled); the first deploy refuses to drop its hand-made
location, then adopts it when told to. The site serves HTTPS (a self-signed certificate:
tls_self_signed) and :80 redirects.
"""

from __future__ import annotations

import json
import runpy
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, assert_idempotent, run_deploy
from watchme.registry import load
from watchme.routes import upstream_uri

pytestmark = [pytest.mark.e2e, pytest.mark.provisioned]  # packages preinstalled

REGISTRY = load()
VHOST = "api.hey-watch.me"
ROOTDIR = runpy.run_path(str(ROOT / "group_data" / "all.py"))["config_root"]
# Test hosts have no real certificate (group_data/testhost.py sets this once merged).
TLS = ("--data", "tls_self_signed=true")
LIVE = f"{ROOTDIR}/nginx/{VHOST}"
AVAILABLE = f"/etc/nginx/sites-available/{VHOST}"
ENABLED = f"/etc/nginx/sites-enabled/{VHOST}"
HAND_SITE = "server { listen 80; server_name api.hey-watch.me; location /hand/ { return 200 'hand'; } }\n"


def start_stub(host, testhost, skip: tuple[str, ...] = ()) -> None:
    """(Re)start the stub upstreams: one port per registry entry, mounted at its upstream path."""
    ports = {str(s.port): s.upstream_path for s in REGISTRY.enabled_services if s.name not in skip}
    subprocess.run(["docker", "cp", str(ROOT / "tests" / "stub_upstream.py"),
                    f"{testhost.name}:/opt/stub_upstream.py"], check=True)
    host.run("systemctl stop watchme-stub 2>/dev/null; systemctl reset-failed watchme-stub 2>/dev/null")
    host.check_output(f"systemd-run --unit watchme-stub python3 /opt/stub_upstream.py {shlex.quote(json.dumps(ports))}")
    # Nginx marks an upstream failed for fail_timeout (10 s) after the deploy's probes
    # found it down: wait until every running stub's route answers through Nginx again.
    for svc in REGISTRY.enabled_services:
        if svc.name in skip:
            continue
        host.check_output(f"for i in $(seq 150); do [ $(curl -s -o /dev/null -w '%{{http_code}}' "
                          f"-k --resolve {VHOST}:443:127.0.0.1 https://{VHOST}{svc.probe_url_path}) = 200 ] "
                          "&& exit 0; sleep 0.1; done; exit 1")


def get(host, path: str, *curl_args: str, scheme: str = "https") -> tuple[int, str]:
    """Request through the live Nginx on the host (SNI for VHOST); returns (status, body)."""
    port = 443 if scheme == "https" else 80
    out = host.check_output(
        f"curl -sk -m 10 -w '\\n%{{http_code}}' --resolve {VHOST}:{port}:127.0.0.1 "
        f"{' '.join(curl_args)} '{scheme}://{VHOST}{path}'")
    body, _, code = out.rpartition("\n")
    return int(code), body


def snapshot(host) -> str:
    """Every Nginx-related file on the host, with its checksum, and the master's workers."""
    return host.check_output(
        f"find {ROOTDIR}/nginx /etc/nginx -xdev \\( -type f -o -type l \\) -printf '%p %l\\n' | sort; "
        f"find {ROOTDIR}/nginx /etc/nginx -type f -exec sha256sum {{}} + | sort")


def workers(host) -> str:
    return host.check_output("pgrep -f '^nginx: worker process' | sort")


def registry_file(tmp_path: Path, **changes) -> dict[str, str]:
    """A copy of the shipped registry with changes[name] = {field: value}; env for the deploy."""
    data = yaml.safe_load((ROOT / "group_data" / "services.yaml").read_text())
    for entry in data["services"]:
        entry.update(changes.get(entry["name"], {}))
    path = tmp_path / "services.yaml"
    path.write_text(yaml.safe_dump(data))
    return {"WATCHME_REGISTRY": str(path)}


@pytest.fixture(scope="module")
def deploy(testhost_env):
    """conftest's deploy, with a self-signed certificate allowed (a blank test host has none)."""

    def _deploy(*args: str, env: dict[str, str] | None = None):
        return run_deploy({**testhost_env, **(env or {})}, "--json", *TLS, *args)

    return _deploy


@pytest.fixture(scope="module")
def first_run(deploy, host, testhost):
    # The seed's server: Nginx serving a hand-edited site file, linked the Debian way.
    host.check_output("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx curl")
    host.check_output(f"mkdir -p /etc/nginx/sites-available /etc/nginx/sites-enabled && "
                      f"printf %s {shlex.quote(HAND_SITE)} > {AVAILABLE} && "
                      f"ln -s ../sites-available/{VHOST} {ENABLED}")
    host.check_output("systemctl reload-or-restart nginx")
    before = snapshot(host)
    refused = deploy()
    assert refused.rc != 0
    assert ("the live site serves location(s) the registry does not have: /hand/. "
            "Nothing was changed.") in refused.stderr
    assert snapshot(host) == before
    run = deploy("--data", "allow_route_removal=true")
    assert run.rc == 0, run.stderr[-3000:]
    start_stub(host, testhost)
    return run


def test_hand_managed_files_kept_as_backups(first_run, host):
    backups = host.check_output(f"ls {ROOTDIR}/nginx/backups").split()
    avail = [b for b in backups if b.startswith("etc_nginx_sites-available_") and ".backup." in b]
    enabled = [b for b in backups if b.startswith("etc_nginx_sites-enabled_") and ".backup." in b]
    assert len(avail) == 1 and len(enabled) == 1, backups
    assert host.file(f"{ROOTDIR}/nginx/backups/{avail[0]}").content_string == HAND_SITE
    assert f"{AVAILABLE} is a hand-managed file; keeping a copy of the resolved file" in first_run.stderr
    # The operator's site was the "previous" version: its own backup is in the seed's form.
    assert any(b.startswith(f"{VHOST}.backup.") for b in backups)


def test_site_linked_into_nginx(first_run, host):
    for path in (AVAILABLE, ENABLED):
        f = host.file(path)
        assert f.is_symlink and f.linked_to == LIVE
    site = host.file(LIVE)
    assert site.contains(f"server_name {VHOST};") and site.contains("server_tokens off;")
    assert site.contains("listen 443 ssl http2;")  # bookworm's Nginx 1.22


def test_port_80_redirects_and_answers_acme(first_run, host):
    out = host.check_output(f"curl -s -o /dev/null -w '%{{http_code}} %{{redirect_url}}' "
                            f"--resolve {VHOST}:80:127.0.0.1 'http://{VHOST}/scheduler/x?q=1'")
    assert out == f"301 https://{VHOST}/scheduler/x?q=1"
    host.check_output("mkdir -p /var/www/letsencrypt/.well-known/acme-challenge && "
                      "printf token > /var/www/letsencrypt/.well-known/acme-challenge/t1")
    assert get(host, "/.well-known/acme-challenge/t1", scheme="http") == (200, "token")


def test_certbot_timer_and_safe_reload_hook(first_run, host):
    assert host.service("certbot.timer").is_enabled
    hook = host.file("/etc/letsencrypt/renewal-hooks/deploy/watchme-nginx-reload")
    assert hook.mode == 0o755 and hook.contains("nginx-safe-apply reload$")
    pids = workers(host)
    host.check_output(f"sh {hook.path}")
    assert workers(host) != pids, "the hook reloaded Nginx"


def test_backup_of_a_link_copies_the_resolved_file(first_run, deploy, host, tmp_path):
    """sites-available as a link into the operator's clone: the backup is the file, not a link."""
    clone = "/home/ubuntu/clone-site"
    host.check_output(f"cp {LIVE} {clone} && ln -sfn {clone} {AVAILABLE}")
    run = deploy()
    assert run.rc == 0, run.stderr[-3000:]
    newest = host.check_output(f"ls -1t {ROOTDIR}/nginx/backups/etc_nginx_sites-available_* | head -1")
    f = host.file(newest)
    assert not f.is_symlink and f.content_string == host.file(clone).content_string
    assert host.file(AVAILABLE).linked_to == LIVE


def test_missing_certificate_stops_before_any_change(first_run, deploy, host):
    before = snapshot(host)
    run = deploy("--data", "tls_self_signed=false",
                 "--data", "tls_certificate=/etc/ssl/none/fullchain.pem")
    assert run.rc != 0
    assert "/etc/ssl/none/fullchain.pem not on the host; nothing was changed" in run.stderr
    assert snapshot(host) == before


def test_hand_edit_of_the_live_file_is_reapplied(first_run, deploy, host):
    """Up to date means what Nginx last applied, not what is on disk."""
    host.check_output(f"sed -i 's/server_tokens off;/server_tokens off; # edited/' {LIVE}")
    run = deploy()
    assert run.rc == 0, run.stderr[-3000:]
    assert not host.file(LIVE).contains("# edited")


@pytest.mark.parametrize("service", REGISTRY.enabled_services, ids=lambda s: s.name)
def test_every_route_reaches_its_upstream_path(first_run, host, service):
    """What `watchme explain` computes is what the real Nginx sends upstream."""
    request = f"{service.public_path}probe/x?q=1"
    status, body = get(host, request)
    wanted = upstream_uri(service.public_path, service.upstream_url, request)
    assert (status, body) == (200, wanted)


def test_incident_scheduler_status_whisper(first_run, host):
    """The seed's 404: /scheduler/status/whisper must reach /api/scheduler/status/whisper."""
    assert get(host, "/scheduler/status/whisper") == (200, "/api/scheduler/status/whisper")


def test_avatar_upload_limits(first_run, host):
    host.check_output("head -c 9M /dev/zero > /tmp/9m && head -c 11M /dev/zero > /tmp/11m")
    assert get(host, "/avatar/upload", "--data-binary @/tmp/9m")[0] == 200
    assert get(host, "/avatar/upload", "--data-binary @/tmp/11m")[0] == 413


def test_cors_preflight_and_server_tokens(first_run, host):
    headers = host.check_output(
        f"curl -sk --http1.1 -D - -o /dev/null -X OPTIONS --resolve {VHOST}:443:127.0.0.1 "
        f"-H 'Origin: https://x.example' https://{VHOST}/avatar/")
    assert headers.startswith("HTTP/1.1 204")
    assert "Access-Control-Allow-Origin: *" in headers
    assert "Server: nginx\r" in headers  # no version
    no_cors = next(s for s in REGISTRY.enabled_services if not s.cors_origins)
    headers = host.check_output(f"curl -sk --http1.1 -D - -o /dev/null --resolve {VHOST}:443:127.0.0.1 "
                                f"https://{VHOST}{no_cors.public_path}")
    assert "Access-Control-Allow-Origin" not in headers


def test_dry_run_shows_diff_and_changes_nothing(first_run, testhost_env, host, tmp_path):
    before = snapshot(host)
    env = {**testhost_env, **registry_file(tmp_path, scheduler={"timeouts": {"read": "61s"}})}
    run = run_deploy(env, "--dry", *TLS, yes=False)
    assert run.rc == 0, run.stderr[-2000:]
    assert "-        proxy_read_timeout 60s;" in run.stderr
    assert "+        proxy_read_timeout 61s;" in run.stderr
    assert snapshot(host) == before


def test_nginx_t_failure_changes_nothing(first_run, deploy, host, tmp_path):
    before, pids = snapshot(host), workers(host)
    # Valid to the registry (which refuses bad sizes and times itself), fatal to nginx -t.
    run = deploy(env=registry_file(tmp_path, avatar={"upstream_host": "no-such-host.invalid"}))
    assert run.rc != 0
    assert "nginx -t failed on the staged candidate; nothing changed, Nginx not reloaded" in run.stderr
    assert 'host not found in upstream "no-such-host.invalid' in run.stderr
    assert snapshot(host) == before, "files on the host changed"
    assert workers(host) == pids, "Nginx was reloaded"
    assert get(host, "/scheduler/status/whisper") == (200, "/api/scheduler/status/whisper")


def test_broken_route_rolled_back(first_run, deploy, host, tmp_path):
    before = snapshot(host)
    run = deploy(env=registry_file(tmp_path, scheduler={"upstream_path": "/v2/scheduler/"}))
    assert run.rc != 0
    assert (f"probe BROKEN: scheduler https://{VHOST}/scheduler/status/whisper expected 200, got 404 "
            "(was 200 before this change)") in run.stderr
    assert "rolled back to the last known-good site" in run.stderr
    assert get(host, "/scheduler/status/whisper") == (200, "/api/scheduler/status/whisper")
    assert snapshot(host) == before


def test_route_of_a_down_service_is_a_warning(first_run, deploy, host, testhost, tmp_path):
    start_stub(host, testhost, skip=("avatar",))
    try:
        env = registry_file(tmp_path, scheduler={"timeouts": {"read": "62s"}})
        run = deploy(env=env)
        assert run.rc == 0, run.stderr[-2000:]
        assert (f"probe warning: avatar https://{VHOST}/avatar/ expected 200, got 502 "
                "(already failing before: 502)") in run.stderr
        assert host.file(LIVE).contains("proxy_read_timeout 62s;")
    finally:
        start_stub(host, testhost)
    # Back to the shipped registry, then the gate.
    assert deploy().rc == 0


def test_service_removed_from_registry_leaves_the_site(first_run, deploy, host, tmp_path):
    env = registry_file(tmp_path, admin={"enabled": False})
    refused = deploy(env=env)
    assert refused.rc != 0 and "/admin/" in refused.stderr  # the guard, before any change
    run = deploy("--data", "allow_route_removal=true", env=env)
    assert run.rc == 0, run.stderr[-2000:]
    assert not host.file(LIVE).contains("location /admin/")
    assert get(host, "/admin/")[0] == 404
    assert deploy().rc == 0  # back to the shipped registry
    assert get(host, "/admin/x") == (200, "/x")


def test_backups_pruned_to_keep(first_run, deploy, host, tmp_path):
    """More applied changes than backups kept (keep=3 for speed, 5 changes): the newest 3
    stay, and the newest holds the change before the live one."""
    for i in range(5):
        env = registry_file(tmp_path, scheduler={"timeouts": {"read": f"{70 + i}s"}})
        run = deploy("--data", "nginx_backups_keep=3", env=env)
        assert run.rc == 0, run.stderr[-2000:]
    names = host.check_output(f"ls -1t {ROOTDIR}/nginx/backups | grep '^{VHOST}.backup.'").split()
    assert len(names) == 3, names
    assert host.file(f"{ROOTDIR}/nginx/backups/{names[0]}").contains("proxy_read_timeout 73s;")
    assert deploy().rc == 0  # back to the shipped registry


def test_second_run_changes_nothing(first_run, deploy):
    assert_idempotent(deploy)
