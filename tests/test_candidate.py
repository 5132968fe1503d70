"""The pure parts of a rollout through a candidate (watchme/candidate.py, watchme/rollout_site.py,
watchme/nginx.py's upstream override) and the deploy's leftover removal, pyinfra's way.
The whole rollout runs end to end in tests/test_rollout.py."""

from __future__ import annotations

import ipaddress
import json
import shlex

import pytest
import yaml

from tasks import tls as tls_task
from tests.pyinfra_fake import run_op, text
from watchme import candidate, images, nginx, rollout_site
from watchme.registry import Service
from watchme.settings import validate

NET = ipaddress.IPv4Network("172.27.0.0/16")
DYNAMIC = validate({}).dynamic_range  # 172.27.255.0/24

APP = Service(name="app", description="App", container="watchme-app", ip="172.27.0.40", port=8040,
              public_path="/app/", upstream_path="/", memory_limit="48m", priority=3,
              compose_file="/home/ubuntu/app/docker-compose.prod.yml")
COMPOSE = """version: "3.8"
services:
  app:
    image: 127.0.0.1:5000/app:live
    container_name: watchme-app
    env_file: [app.env]
    volumes: [data:/data, shared:/shared, /srv/x:/x]
    networks: [watchme-network]
volumes:
  data: {}
  shared:
    external: true
networks:
  watchme-network:
    external: true
"""


# --- the address -------------------------------------------------------------------------------

def test_the_address_comes_from_the_top_of_the_dynamic_range():
    assert DYNAMIC == ipaddress.IPv4Network("172.27.255.0/24")
    assert candidate.choose_address(DYNAMIC, set()) == ipaddress.IPv4Address("172.27.255.254")


def test_an_address_in_use_or_reserved_is_never_chosen():
    used = candidate.used_addresses(json.dumps([{"Containers": {
        "a": {"IPv4Address": "172.27.255.254/16"}, "b": {"IPv4Address": "172.27.0.40/16"}}}]))
    assert used == {"172.27.255.254", "172.27.0.40"}
    got = candidate.choose_address(DYNAMIC, used, [ipaddress.IPv4Address("172.27.255.253")])
    assert got == ipaddress.IPv4Address("172.27.255.252")


def test_never_a_fixed_ip_even_of_a_stopped_service():
    # Registry IPs live outside the dynamic range: whatever is free there is no service's.
    for a in (candidate.choose_address(DYNAMIC, {f"172.27.255.{i}" for i in range(100, 255)}),):
        assert a in DYNAMIC and a != APP.ip


def test_a_full_range_gives_none():
    small = ipaddress.IPv4Network("172.27.255.252/30")
    assert candidate.choose_address(small, {"172.27.255.253", "172.27.255.254"}) is None


def test_unreadable_network_json_means_nothing_known_in_use():
    assert candidate.used_addresses("Error: no such network") == set()


# --- memory: room for a second copy, else in place -------------------------------------------

MEMINFO = "MemTotal:        1900000 kB\nMemFree:  100 kB\nMemAvailable:     614400 kB\n"


def test_meminfo_is_read_in_mib():
    assert candidate.available_mib(MEMINFO) == 600
    assert candidate.available_mib("MemTotal: 1 kB\n") is None


@pytest.mark.parametrize("available, ok", [(600, True), (348, True), (347, False), (None, False)])
def test_room_needs_the_limit_plus_the_os_reserve(available, ok):
    why = candidate.room_for_second_copy(available, 48, 300)
    assert (why == "") is ok
    if not ok and available is not None:
        assert "memory_limit 48 MiB" in why and "memory_os_reserve_mib 300 MiB" in why


# --- the candidate's compose override --------------------------------------------------------

def _override(volumes=None):
    target = images.compose_target(COMPOSE, APP.container, "watchme-network")
    return candidate.render_override(APP, target, APP.compose_file, "127.0.0.1:5000/app:v2",
                                     "172.27.255.254", volumes)


def test_the_override_is_the_services_with_another_name_and_address():
    doc = yaml.safe_load(_override())
    svc = doc["services"]["app"]
    assert svc["container_name"] == "watchme-app-candidate"
    assert svc["mem_limit"] == "48m"  # the registry's limit, as the live container's
    assert svc["image"] == "127.0.0.1:5000/app:v2"
    assert svc["networks"] == {"watchme-network": {"ipv4_address": "172.27.255.254"}}
    assert "172.27.0.40" not in _override()  # never the fixed IP
    assert svc["labels"] == {candidate.LABEL: "app"}
    assert svc["restart"] == "no"  # an image that exits stays exited: rejected
    assert doc["version"] == "3.8"
    assert "env_file" not in svc and "PORT" not in _override()  # compose reads the env file


def test_named_volumes_are_the_live_projects():
    vols = candidate.shared_volumes(COMPOSE, "app")
    assert vols == {"data": "app_data"}  # `shared` is external: the same name everywhere
    doc = yaml.safe_load(_override(vols))
    assert doc["volumes"] == {"data": {"external": True, "name": "app_data"}}
    assert candidate.shared_volumes(COMPOSE, None) == {}
    assert candidate.shared_volumes("services: {}\n", "app") == {}


def test_the_run_command_is_another_project_quoted():
    cmd = candidate.run_command(APP, "app", "/home/u/my app/c.yml",
                                "/var/lib/watchme/rollout/app.candidate.yml")
    assert "-p watchme-candidate-app" in cmd
    assert shlex.quote("/home/u/my app/c.yml") in cmd
    assert cmd.endswith("run -d -T --no-deps --name watchme-app-candidate app")


def test_the_container_port_is_the_one_the_registry_port_publishes():
    live = {"HostConfig": {"PortBindings": {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8040"}]}}}
    assert candidate.container_port(live, 8040) == 8000
    assert candidate.container_port({"HostConfig": {"PortBindings": None}}, 8040) == 8040
    assert candidate.container_port(None, 8040) == 8040


@pytest.mark.parametrize("state, says", [
    ({"State": {"Running": True}, "RestartCount": 0}, ""),
    ({"State": {"Running": False, "ExitCode": 3}, "RestartCount": 0}, "exited (exit code 3)"),
    ({"State": {"Running": True}, "RestartCount": 2}, "exited"),
    (None, "gone"),
])
def test_a_candidate_that_exits_is_rejected(state, says):
    got = candidate.state(state)
    assert (got == "") if not says else (says in got)


def test_leftovers_are_listed_by_label():
    assert candidate.parse_list(["/watchme-app-candidate app 172.27.255.254", "/x dyn"]) == {
        "watchme-app-candidate": {"service": "app", "addresses": ["172.27.255.254"]},
        "x": {"service": "dyn", "addresses": []}}
    assert f"label={candidate.LABEL}" in candidate.LIST


# --- the deploy's removal of leftovers (facts in, commands out) -----------------------------

def test_the_deploy_removes_a_leftover_candidate():
    found = {"watchme-app-candidate": {"service": "app", "addresses": ["172.27.255.254"]}}
    commands, host = run_op(candidate.remove_leftovers, {candidate.Candidates: found})
    assert text(commands) == ["docker rm -f watchme-app-candidate >/dev/null"]


def test_no_leftover_is_a_noop():
    commands, host = run_op(candidate.remove_leftovers, {candidate.Candidates: {}})
    assert commands == [] and host.noops == ["no rollout candidate container"]


# --- the Nginx site with the candidate's upstream --------------------------------------------

def test_the_upstream_override_changes_only_that_proxy_pass():
    other = APP.model_copy(update={"name": "dyn", "container": "watchme-dyn", "port": 8041,
                                   "public_path": "/dyn/"})
    tls = {"certificate": "/c.pem", "key": "/k.pem", "acme_root": nginx.ACME_ROOT,
           "http2": "listen"}
    base = nginx.render_site("api.hey-watch.me", [APP, other], "/b", tls)
    moved = nginx.render_site("api.hey-watch.me", [APP, other], "/b", tls,
                              upstreams={"app": ("172.27.255.254", 8000)})
    changed = [(a, b) for a, b in zip(base.splitlines(), moved.splitlines()) if a != b]
    assert len(base.splitlines()) == len(moved.splitlines())
    assert [b.strip() for _, b in changed] == [
        "# /app/foo -> http://172.27.255.254:8000/foo (watchme-app)",
        "proxy_pass http://172.27.255.254:8000/;"]
    assert nginx.render_site("api.hey-watch.me", [APP, other], "/b", tls, upstreams={}) == base


def test_the_rollout_renders_tls_as_the_deploy():
    assert tls_task.ACME_ROOT is nginx.ACME_ROOT  # one definition, in watchme/nginx.py


# --- candidate or in place -------------------------------------------------------------------

OK = dict(front=True, overlay=False, running=True, container="watchme-app", has_image=True,
          site_is_render=True, address=ipaddress.IPv4Address("172.27.255.254"), dynamic=DYNAMIC,
          room="")


@pytest.mark.parametrize("change, says", [
    ({}, ""),
    ({"room": "MemAvailable 100 MiB < 348 MiB"}, "MemAvailable 100 MiB"),
    ({"front": False}, "another host than Nginx"),
    ({"overlay": True}, "overlay"),
    ({"running": False}, "watchme-app is not running"),
    ({"has_image": False}, "names no image"),
    ({"site_is_render": False}, "run the deploy first"),
    ({"address": None}, "no free address in the dynamic range 172.27.255.0/24"),
])
def test_the_mode_decision_names_its_reason(change, says):
    got = candidate.in_place_reason(**{**OK, **change})
    assert (got == "") if not says else (says in got)
