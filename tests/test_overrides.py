"""tasks/overrides.py and the override text (watchme/images.py): compose service discovery,
rendering, and the operation fed with facts the way pyinfra tests its own.

End to end (real compose, the container's limit and IP after a restart): tests/test_rollout.py.
"""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

import pytest
import yaml

from watchme import images

SEED_LIKE = """version: "3.8"
services:
  api:
    image: 754724220380.dkr.ecr.ap-southeast-2.amazonaws.com/watchme-api-whisper:latest
    container_name: api-transcriber
    networks: [watchme-network]
  redis:
    image: redis:7
networks:
  watchme-network:
    external: true
"""


def svc(**kw):
    base = dict(name="transcriber", container="api-transcriber", ip=ipaddress.ip_address("172.27.0.3"),
                memory_limit="1024m")
    return SimpleNamespace(**{**base, **kw})


def test_target_is_the_service_with_the_registry_container_name():
    t = images.compose_target(SEED_LIKE, "api-transcriber", "watchme-network")
    assert t == {"key": "api", "image": "754724220380.dkr.ecr.ap-southeast-2.amazonaws.com/"
                 "watchme-api-whisper:latest", "version": "3.8", "network_key": "watchme-network",
                 "network_declared": True}


def test_target_is_the_only_service_without_container_name():
    t = images.compose_target("services:\n  web:\n    image: x\n", "c", "watchme-network")
    assert (t["key"], t["version"], t["network_declared"]) == ("web", None, False)


def test_network_declared_under_another_key_is_found_by_name():
    text = ("services:\n  web: {image: x}\nnetworks:\n  shared:\n    external: true\n"
            "    name: watchme-network\n")
    assert images.compose_target(text, "c", "watchme-network")["network_key"] == "shared"


@pytest.mark.parametrize("text, says", [
    (SEED_LIKE.replace("container_name: api-transcriber", "container_name: other"),
     "none with container_name: api-transcriber"),
    ("services: {}\n", "has no services"),
    ("services: [a\n", "not valid YAML"),
])
def test_undiscoverable_service_names_the_fix(text, says):
    with pytest.raises(images.ComposeError, match=says):
        images.compose_target(text, "api-transcriber", "watchme-network")


def test_rendered_override_merges_limit_ip_and_name():
    t = images.compose_target(SEED_LIKE, "api-transcriber", "watchme-network")
    doc = yaml.safe_load(images.render_override(svc(), t, "/srv/c.yml"))
    assert doc == {"version": "3.8", "services": {"api": {
        "container_name": "api-transcriber", "mem_limit": "1024m",
        "networks": {"watchme-network": {"ipv4_address": "172.27.0.3"}}}}}


def test_null_ip_leaves_networks_alone_and_pin_sets_image():
    t = images.compose_target("services:\n  web: {image: x}\n", "c", "watchme-network")
    doc = yaml.safe_load(images.render_override(svc(ip=None), t, "/srv/c.yml", "r:5000/a@sha256:" + "a" * 64))
    assert doc == {"services": {"web": {"container_name": "api-transcriber", "mem_limit": "1024m",
                                        "image": "r:5000/a@sha256:" + "a" * 64}}}


def test_override_declares_the_network_when_the_compose_file_does_not():
    t = images.compose_target("services:\n  web: {image: x}\n", "c", "watchme-network")
    doc = yaml.safe_load(images.render_override(svc(), t, "/srv/c.yml"))
    assert doc["networks"] == {"watchme-network": {"external": True}}


def test_pins_parse_tolerates_junk():
    assert images.parse_pins('{"a": "r/x:1"}') == {"a": "r/x:1"}
    assert images.parse_pins("not json") == {} and images.parse_pins("[1]") == {}
