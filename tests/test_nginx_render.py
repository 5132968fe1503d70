"""The rendered site, checked locally: gixy-ng, and the pieces every location needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from watchme.nginx import render_site
from watchme.registry import load

GIXY = str(Path(sys.executable).with_name("gixy"))
# Checks suppressed, each with its reason:
SUPPRESSED = {
    # Flags every proxy_pass with a path (the URI is normalised before it is replaced).
    # The two-layer routing *is* a path in proxy_pass (seed section 1); the registry's
    # slash rule and the route tests pin down exactly what reaches each upstream.
    "proxy_pass_normalized",
}


TLS = {"certificate": "/etc/letsencrypt/live/api.hey-watch.me/fullchain.pem",
       "key": "/etc/letsencrypt/live/api.hey-watch.me/privkey.pem", "http2": "listen",
       "acme_root": "/var/www/letsencrypt"}


def render(tmp_path: Path, registry=None, tls=TLS) -> Path:
    registry = registry or load()
    site = tmp_path / "site"
    site.write_text(render_site("api.hey-watch.me", registry.enabled_services, "/backups", tls))
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"events {{}}\nhttp {{\n    include {site};\n}}\n")
    return conf


def test_site_passes_gixy(tmp_path):
    conf = render(tmp_path)
    out = subprocess.run([GIXY, "--skips", ",".join(sorted(SUPPRESSED)), str(conf)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Medium: 0" in out.stdout and "High: 0" in out.stdout


def test_only_suppressed_checks_fire_without_skips(tmp_path):
    out = subprocess.run([GIXY, str(render(tmp_path))], capture_output=True, text=True)
    fired = {line.split("[", 1)[1].split("]", 1)[0]
             for line in out.stdout.splitlines() if line.startswith(">> Problem: [")}
    assert fired <= SUPPRESSED


def test_every_service_has_one_location_with_its_limits(tmp_path):
    text = (render(tmp_path).parent / "site").read_text()
    registry = load()
    for s in registry.enabled_services:
        block = text.split(f"location {s.public_path} {{", 1)[1].split("\n    }", 1)[0]
        assert f"proxy_pass {s.upstream_url};" in block
        assert f"client_max_body_size {s.max_body_size};" in block
        assert f"proxy_read_timeout {s.timeouts.read};" in block
        assert ("Access-Control-Allow-Origin" in block) == bool(s.cors_origins)
    # + the ACME webroot and the redirect on :80
    assert text.count("location ") == len(registry.enabled_services) + 2
    assert "server_tokens off;" in text


def test_tls_site_listens_443_and_redirects_80(tmp_path):
    text = (render(tmp_path).parent / "site").read_text()
    http, https = text.split("server {")[1:3]
    assert "listen 80;" in http and "return 301 https://api.hey-watch.me$request_uri;" in http
    assert "location /.well-known/acme-challenge/ {\n        root /var/www/letsencrypt;" in http
    assert "proxy_pass" not in http
    assert "listen 443 ssl http2;" in https and f"ssl_certificate {TLS['certificate']};" in https
    assert "listen 80" not in https
    newer = (render(tmp_path, tls={**TLS, "http2": "directive"}).parent / "site").read_text()
    assert "listen 443 ssl;" in newer and "http2 on;" in newer


def test_http_only_site_is_one_server_on_80(tmp_path):
    text = (render(tmp_path, tls=None).parent / "site").read_text()
    assert text.count("server {") == 1 and "listen 80;" in text
    assert "ssl" not in text and "acme-challenge" not in text


def test_cors_list_uses_a_map_never_a_wildcard(tmp_path):
    from watchme.registry import load_data
    import yaml

    data = yaml.safe_load((Path(__file__).parent.parent / "group_data" / "services.yaml").read_text())
    data["services"] = [dict(data["services"][0], cors_origins=["https://hey-watch.me"])]
    text = (render(tmp_path, load_data(data)).parent / "site").read_text()
    name = data["services"][0]["name"].replace("-", "_")
    assert f"map $http_origin $watchme_cors_{name}" in text
    assert '"https://hey-watch.me" $http_origin;' in text
    assert 'Access-Control-Allow-Origin "*"' not in text
