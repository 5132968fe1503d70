"""Extra locations (watchme/extra_locations.py): the live site's non-service locations, kept
through adoption, parsed by crossplane and re-emitted from an allow-list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from watchme import extra_locations as xl
from watchme import live_routes
from watchme.nginx import render_site
from watchme.registry import RegistryError, load_data

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "replica"
HEALTH = "access_log off;\ndefault_type text/plain;\nreturn 200 ok\\n;\n"
STATUS = "proxy_pass http://127.0.0.1:8099/;\nproxy_set_header Host $host;\n"


def registry(extras):
    data = yaml.safe_load((ROOT / "group_data" / "services.yaml").read_text())
    data["extra_locations"] = extras
    return data


def test_the_seeds_health_and_status_locations_are_re_emitted_by_crossplane():
    assert xl.nginx(xl.parse("= /health", HEALTH)) == (
        "    location = /health {\n        access_log off;\n        default_type text/plain;\n"
        "        return 200 ok\\n;\n    }")
    assert "proxy_pass http://127.0.0.1:8099/;" in xl.nginx(xl.parse("/status/", STATUS))


@pytest.mark.parametrize("location, config, reason", [
    ("~ \\.php$", "return 403;", "regex match"),
    ("/x/", "root /var/www;", "directive `root` is not allowed"),
    ("/x/", "proxy_pass http://169.254.169.254/;", "only http://localhost"),
    ("/x/", "proxy_pass http://10.0.0.5:80/;", "only http://localhost"),
    ("/x/", "proxy_pass http://127.0.0.1:80$uri;", "only http://localhost"),
    ("/x/", "proxy_pass http://127.0.0.1:80/api;", "trailing slash"),
    ("/x/", "add_header X-A $http_cookie;", "literal value"),
    ("/x/", "return 200; }\nlocation /y/ { root /;", "closes the location's block"),
    ("/x/", "return 200 \"a\\\" ; root /\";", "text may not contain"),
    ("/x/", "proxy_set_header Host $http_x;\nreturn 204;", "only Host $host"),
    ("/x/", "if ($uri) { return 403; }", "only the CORS preflight"),
    ("/x/", "access_log off;", "nothing would answer"),
    ("/x/", "", "config is empty"),
    ("/x/ y", "return 204;", "may use only letters"),
])
def test_anything_off_the_allow_list_is_refused_with_the_reason(location, config, reason):
    with pytest.raises(xl.ExtraLocationError) as e:
        xl.parse(location, config)
    assert reason in str(e.value)


def test_the_registry_carries_them_and_refuses_clashes():
    reg = load_data(registry([{"location": "= /health", "config": HEALTH}]))
    assert [x.location for x in reg.extra_locations] == ["= /health"]
    with pytest.raises(RegistryError, match=r"extra_locations\[1\]: .*directive `root`"):
        load_data(registry([{"location": "/x/", "config": "root /;"}]))
    path = reg.services[0].public_path
    with pytest.raises(RegistryError, match=r"extra_locations\[1\].location: .*also a service"):
        load_data(registry([{"location": path, "config": "return 204;"}]))
    with pytest.raises(RegistryError, match=r"extra_locations\[1\].note"):
        load_data(registry([{"location": "/y/", "config": "return 204;", "note": "x"}]))


def test_the_rendered_site_keeps_the_replicas_live_locations():
    live = json.loads((FIXTURES / "live.json").read_text())
    from watchme import importer

    imp = importer.build(live)
    data = yaml.safe_load(importer.render(imp))
    reg = load_data(data)
    site = render_site("api.hey-watch.me", reg.enabled_services, "/b", None, reg.extra_locations)
    files = live_routes.LiveNginxConfig().process(live["nginx"]["out"].splitlines())
    assert live_routes.dropped(files, site, "api.hey-watch.me") == []
    assert "location = /health {" in site and "location /status/ {" in site



def test_the_safe_cycle_probes_the_extra_locations():
    from watchme.nginx import probes
    reg = load_data(registry([{"location": "= /health", "config": HEALTH},
                              {"location": "/status/", "config": STATUS}]))
    out = probes("h", [], True, reg.extra_locations)
    assert out == ["extra-1|https://h/health|200|", "extra-2|https://h/status/|200|",
                   "http-redirect|http://h/|301|https://h/"]
    gone = load_data(registry([{"location": "= /gone", "config": "return 410;"}]))
    assert probes("h", [], False, gone.extra_locations) == ["extra-1|http://h/gone|410|"]
