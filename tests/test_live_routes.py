"""The route-removal guard's reading of `nginx -T` (crossplane), without a host."""

from __future__ import annotations

from watchme import live_routes
from watchme.nginx import render_site
from watchme.registry import load

VHOST = "api.hey-watch.me"
NGINX_T = f"""nginx: the configuration file /etc/nginx/nginx.conf syntax is ok
# configuration file /etc/nginx/nginx.conf:
http {{
    include /etc/nginx/sites-enabled/*;
    server {{ server_name other.example; location /elsewhere/ {{ return 200; }} }}
}}

# configuration file /etc/nginx/sites-enabled/{VHOST}:
server {{
    listen 80;
    server_name {VHOST};
    location /.well-known/acme-challenge/ {{ root /var/www/letsencrypt; }}
    location / {{ return 301 https://$host$request_uri; }}
}}
server {{
    listen 443 ssl;
    server_name {VHOST} www.{VHOST};
    location /vault/ {{ proxy_pass http://localhost:8000/; }}
    location = /health {{ return 200 "ok"; }}
    location /hand/ {{
        # a comment
        proxy_pass http://localhost:8999/;
    }}
}}
""".splitlines()


def test_fact_splits_nginx_t_into_files():
    files = live_routes.LiveNginxConfig().process(NGINX_T)
    assert list(files) == ["/etc/nginx/nginx.conf", f"/etc/nginx/sites-enabled/{VHOST}"]


def test_locations_of_the_server_name_only_and_not_acme_or_redirects():
    files = live_routes.LiveNginxConfig().process(NGINX_T)
    assert live_routes.locations(files, VHOST) == {"/vault/", "= /health", "/hand/"}


def test_dropped_lists_what_the_rendered_site_lacks():
    files = live_routes.LiveNginxConfig().process(NGINX_T)
    registry = load()
    rendered = render_site(VHOST, registry.enabled_services, "/b", None)
    gone = live_routes.dropped(files, rendered, VHOST)
    assert gone == ["/hand/", "= /health"]
    vault_gone = live_routes.dropped(files, render_site(VHOST, [], "/b", None), VHOST)
    assert "/vault/" in vault_gone


def test_no_nginx_means_nothing_to_drop():
    assert live_routes.dropped(live_routes.LiveNginxConfig().process([]), "server {}", VHOST) == []
