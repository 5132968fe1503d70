"""watchme/network.py and watchme/units.py without a host, the way pyinfra tests its own
operations: canned facts in, the commands (or the noop) out."""

from __future__ import annotations

import base64

import pytest
import yaml
from pyinfra.api.exceptions import OperationError
from pyinfra.context import ctx_host

from watchme.network import (ComposeFiles, DockerNetwork, audit_compose, docker_network,
                             migrate_compose)
from watchme.units import UnitFiles, ours, unit_link

WANTED = {"network": "watchme-network", "driver": "bridge", "subnet": "172.27.0.0/16",
          "gateway": "172.27.0.1"}


class FakeHost:
    def __init__(self, facts: dict):
        self.facts, self.noops, self.asked = facts, [], []

    def get_fact(self, cls, **kwargs):
        self.asked.append((cls, kwargs))
        return self.facts[cls]

    def noop(self, message: str) -> None:
        self.noops.append(message)


def run_op(op, facts: dict, **kwargs) -> tuple[list[str], FakeHost]:
    fake = FakeHost(facts)
    with ctx_host.use(fake):
        commands = [str(c) for c in op._inner(**kwargs)]
    return commands, fake


def network(subnet="172.27.0.0/16", gateway="172.27.0.1", driver="bridge", containers=()):
    return {"name": "watchme-network", "driver": driver, "subnet": subnet, "gateway": gateway,
            "labels": {}, "containers": list(containers)}


def test_missing_network_is_created():
    cmds, fake = run_op(docker_network, {DockerNetwork: None}, **WANTED)
    assert cmds == ["docker network create --driver bridge --subnet 172.27.0.0/16 "
                    "--gateway 172.27.0.1 watchme-network"]
    assert fake.asked == [(DockerNetwork, {"network": "watchme-network"})]


def test_matching_network_is_a_noop():
    cmds, fake = run_op(docker_network, {DockerNetwork: network()}, **WANTED)
    assert cmds == []
    assert fake.noops == ["network watchme-network: bridge 172.27.0.0/16 gateway 172.27.0.1"]


@pytest.mark.parametrize("found, line", [
    (network(subnet="172.18.0.0/16"), "subnet   wanted 172.27.0.0/16    found 172.18.0.0/16"),
    (network(gateway="172.27.0.254"), "gateway  wanted 172.27.0.1       found 172.27.0.254"),
    (network(driver="macvlan"), "driver   wanted bridge           found macvlan"),
])
def test_drift_without_repair_fails_with_the_diff(found, line):
    found["containers"] = [{"name": "api-transcriber", "ip": "172.18.0.3", "aliases": ["transcriber"],
                            "running": True}]
    with pytest.raises(OperationError) as e:
        run_op(docker_network, {DockerNetwork: found}, **WANTED)
    msg = str(e.value)
    assert line in msg
    assert "api-transcriber              172.18.0.3 aliases transcriber" in msg
    assert "network_repair=true" in msg


def test_repair_reconnects_with_ips_and_aliases():
    found = network(subnet="172.27.0.0/24", gateway="172.27.0.254", containers=[
        {"name": "api-transcriber", "ip": "172.27.0.3", "aliases": ["transcriber"], "running": True},
        {"name": "stray", "ip": "172.27.0.50", "aliases": [], "running": False},
        {"name": "elsewhere", "ip": "10.1.0.5", "aliases": ["e1", "e2"], "running": True},
        {"name": "watchme-vault-api", "ip": "10.9.0.6", "aliases": [], "running": True},
    ])
    cmds, _ = run_op(docker_network, {DockerNetwork: found}, **WANTED, repair=True,
                     fixed_ips={"watchme-vault-api": "172.27.0.6"})
    assert cmds == [
        "docker network disconnect watchme-network api-transcriber",
        "docker network disconnect watchme-network stray",
        "docker network disconnect watchme-network elsewhere",
        "docker network disconnect watchme-network watchme-vault-api",
        "docker network rm watchme-network",
        "docker network create --driver bridge --subnet 172.27.0.0/16 --gateway 172.27.0.1 watchme-network",
        "docker network connect --ip 172.27.0.3 --alias transcriber watchme-network api-transcriber",
        "docker network connect --ip 172.27.0.50 watchme-network stray",
        # its old IP is outside the new subnet and it has no registry IP: Docker picks one
        "docker network connect --alias e1 --alias e2 watchme-network elsewhere",
        # the registry's IP wins
        "docker network connect --ip 172.27.0.6 watchme-network watchme-vault-api",
    ]


def test_repair_of_a_matching_network_is_a_noop():
    cmds, fake = run_op(docker_network, {DockerNetwork: network()}, **WANTED, repair=True)
    assert cmds == [] and fake.noops


def test_network_fact_parses_inspect_output():
    net = [{"Name": "watchme-network", "Driver": "bridge", "Labels": {},
            "IPAM": {"Config": [{"Subnet": "172.27.0.0/16", "Gateway": "172.27.0.1"}]}}]
    containers = [{"Id": "abcdef0123456789", "Name": "/watchme-alpha", "State": {"Running": True},
                   "NetworkSettings": {"Networks": {"watchme-network": {
                       "IPAMConfig": {"IPv4Address": "172.27.0.6"}, "IPAddress": "172.27.0.6",
                       "Aliases": ["abcdef012345", "alpha"]}}}}]
    import json
    out = DockerNetwork().process([*json.dumps(net, indent=2).splitlines(), "@@containers",
                                   *json.dumps(containers).splitlines()])
    assert out == {"name": "watchme-network", "driver": "bridge", "subnet": "172.27.0.0/16",
                   "gateway": "172.27.0.1", "labels": {},
                   "containers": [{"name": "watchme-alpha", "ip": "172.27.0.6", "aliases": ["alpha"],
                                   "running": True}]}
    assert DockerNetwork().process(["[]", "@@containers", "[]"]) is None


def test_compose_files_fact():
    text = "services: {}\n"
    b64 = base64.b64encode(text.encode()).decode()
    out = ComposeFiles().process(["@@file ubuntu ubuntu 644 /a/b.yml", b64, "@@missing /c/d.yml"])
    assert out == {"/a/b.yml": {"user": "ubuntu", "group": "ubuntu", "mode": "644", "text": text},
                   "/c/d.yml": None}


# --- compose audit and migration ---------------------------------------------------------

SEED_BUG = """version: '3.8'

services:
  api:
    image: whisper:latest   # the seed's api_whisper_v1
    networks:
      - watchme-network

networks:
  watchme-network:
    driver: bridge  # the seed's mistake

volumes:
  models: {}
"""


def test_audit_reports_driver_bridge():
    assert audit_compose(SEED_BUG, "watchme-network", "172.27.0.0/16") == [
        ("watchme-network", "networks.watchme-network has driver: bridge: compose creates a network "
                            "of its own instead of joining watchme-network; use external: true")]


@pytest.mark.parametrize("text", [
    "networks:\n  watchme-network:\n    external: true\n",
    "networks:\n  watchme-network:\n    external:\n      name: watchme-network\n",
    "networks:\n  wn:\n    name: watchme-network\n    external: true\n",
    "networks:\n  other:\n    driver: bridge\n",
    "services:\n  a:\n    image: x\n",
])
def test_audit_accepts_external_and_unrelated(text):
    assert audit_compose(text, "watchme-network", "172.27.0.0/16") == []


def test_audit_reports_another_subnet_and_a_renamed_entry():
    text = ("networks:\n  shared:\n    name: watchme-network\n    ipam:\n      config:\n"
            "        - subnet: 172.20.0.0/16\n")
    problems = audit_compose(text, "watchme-network", "172.27.0.0/16")
    assert [k for k, _ in problems] == ["shared", "shared"]
    assert "networks.shared asks for subnet 172.20.0.0/16, not 172.27.0.0/16" == problems[1][1]


def test_audit_reports_bad_yaml():
    assert audit_compose("a: [", "watchme-network", "x")[0][1].startswith("not valid YAML")


def test_migrate_changes_only_the_network_entry():
    new = migrate_compose(SEED_BUG, ["watchme-network"])
    assert new == SEED_BUG.replace("    driver: bridge  # the seed's mistake\n", "    external: true\n")


def test_migrate_keeps_the_name_and_drops_ipam():
    text = ("services:\n  a:\n    image: x\nnetworks:\n  shared:\n    name: watchme-network\n"
            "    driver: bridge\n    ipam:\n      config:\n        - subnet: 172.20.0.0/16\n"
            "  other:\n    driver: bridge\n")
    new = migrate_compose(text, ["shared"])
    assert new == ("services:\n  a:\n    image: x\nnetworks:\n  shared:\n    name: watchme-network\n"
                   "    external: true\n  other:\n    driver: bridge\n")


def test_migrate_inline_entry_without_trailing_newline():
    new = migrate_compose("networks:\n  watchme-network: {driver: bridge}", ["watchme-network"])
    assert new == "networks:\n  watchme-network:\n    external: true"
    assert yaml.safe_load(new) == {"networks": {"watchme-network": {"external": True}}}


def test_migrate_refuses_flow_style_networks():
    with pytest.raises(ValueError, match="block-style"):
        migrate_compose("networks: {watchme-network: {driver: bridge}}\n", ["watchme-network"])


# --- unit links --------------------------------------------------------------------------

def test_unit_link_keeps_a_hand_written_file_as_backup():
    cmds, _ = run_op(unit_link, {UnitFiles: {"alpha.service": None}},
                     path="/etc/systemd/system/alpha.service", target="/cfg/systemd/alpha.service")
    assert cmds == ["mv /etc/systemd/system/alpha.service "
                    "/etc/systemd/system/alpha.service.backup.$(date +%Y%m%d_%H%M%S)",
                    "ln -sfn /cfg/systemd/alpha.service /etc/systemd/system/alpha.service"]


def test_unit_link_missing_or_elsewhere_is_linked():
    for units in ({}, {"alpha.service": "/old/alpha.service"}):
        cmds, _ = run_op(unit_link, {UnitFiles: units}, path="/etc/systemd/system/alpha.service",
                         target="/cfg/systemd/alpha.service")
        assert cmds == ["ln -sfn /cfg/systemd/alpha.service /etc/systemd/system/alpha.service"]


def test_unit_link_in_place_is_a_noop():
    cmds, fake = run_op(unit_link, {UnitFiles: {"alpha.service": "/cfg/systemd/alpha.service"}},
                        path="/etc/systemd/system/alpha.service", target="/cfg/systemd/alpha.service")
    assert cmds == [] and fake.noops


def test_ours_finds_links_into_the_config_root():
    units = UnitFiles().process(["link alpha.service /cfg/systemd/alpha.service",
                                 "link sshd.service /lib/systemd/system/ssh.service",
                                 "file hand.service", "link x.service /cfg/systemd-old/x.service"])
    assert units["hand.service"] is None
    assert ours(units, "/cfg/systemd") == ["alpha.service"]


def test_network_created_without_gateway_uses_docker_default():
    import json
    net = [{"Name": "watchme-network", "Driver": "bridge", "IPAM": {"Config": [{"Subnet": "172.27.0.0/16"}]}}]
    out = DockerNetwork().process([json.dumps(net), "@@containers", "[]"])
    assert out["gateway"] == "172.27.0.1"
    cmds, fake = run_op(docker_network, {DockerNetwork: out}, **WANTED)
    assert cmds == [] and fake.noops


def test_infrastructure_unit_accepts_the_implicit_default_gateway():
    from watchme.network import unit_check_pattern
    assert unit_check_pattern("bridge", "172.27.0.0/16", "172.27.0.1") == \
        '"bridge 172.27.0.0/16 172.27.0.1"|"bridge 172.27.0.0/16"'
    assert unit_check_pattern("bridge", "172.27.0.0/16", "172.27.0.254") == '"bridge 172.27.0.0/16 172.27.0.254"'
