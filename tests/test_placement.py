"""Issue 14 without hosts: placement, private addresses, the swarm and firewall operations
(facts in, commands out, tests/pyinfra_fake.py), and the overlay the host script creates."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyinfra.api import FunctionCommand
from pyinfra.api.exceptions import OperationError

from tests.pyinfra_fake import FakeData, run_op, text
from watchme import placement
from watchme.registry import RegistryError, load_data
from watchme.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "files"))
import network_repair  # noqa: E402

BASE = {"description": "d", "upstream_path": "/", "memory_limit": "64m", "priority": 3}


def entry(name, ip, port, **kw):
    return {**BASE, "name": name, "container": f"c-{name}", "ip": ip, "port": port,
            "public_path": f"/{name}/", "compose_file": f"/srv/{name}.yml", **kw}


REGISTRY = load_data({"services": [entry("vault", "172.27.0.20", 8060),
                                   entry("transcriber", "172.27.0.21", 8013, host="b"),
                                   entry("off", "172.27.0.22", 8014, host="b", enabled=False)]})


def fake_host(name, front=False, **data):
    return SimpleNamespace(name=name, data=FakeData(placement_name=name, front=front,
                                                    registry=REGISTRY, **data))


def test_services_here_per_host_front_by_default():
    a, b = fake_host("a", front=True), fake_host("b")
    assert [s.name for s in placement.services_here(a, [b, a])] == ["vault"]
    assert [s.name for s in placement.services_here(b, [b, a])] == ["transcriber"]
    assert placement.front([b, a]) is a


def test_swarm_with_two_hosts_or_when_asked():
    a = fake_host("a", front=True, network_driver="bridge")
    assert not placement.swarm(a, [a]) and placement.network_driver(a, [a]) == "bridge"
    assert placement.swarm(a, [a, fake_host("b")])
    one = fake_host("a", front=True, network_scope="swarm")
    assert placement.swarm(one, [one]) and placement.network_driver(one, [one]) == "overlay"


def test_unknown_host_names_the_field_and_the_known_hosts():
    data = {"services": [entry("transcriber", "172.27.0.21", 8013, host="whisper")]}
    assert placement.unknown_hosts(data, ["a", "b"]) == [
        "services[transcriber].host: 'whisper' is not an inventory host; known hosts: a, b "
        "(WATCHME_HOSTS names them name=user@addr)"]
    assert placement.unknown_hosts(data, ["a", "whisper"]) == []


def test_inventory_check_before_ssh(tmp_path, monkeypatch):
    import yaml
    path = tmp_path / "services.yaml"
    path.write_text(yaml.safe_dump({"services": [entry("t", "172.27.0.21", 8013, host="c")]}))
    monkeypatch.setenv("WATCHME_REGISTRY", str(path))
    hosts = [("a", {"placement_name": "a"}), ("b", {"placement_name": "b"})]
    with pytest.raises(placement.PlacementError, match=r"services\[t\]\.host: 'c' .* known hosts: a, b"):
        placement.check_inventory(hosts, {})
    with pytest.raises(placement.PlacementError, match="WATCHME_PRIVATE_ADDRESSES: 'c=10.0.0.1'"):
        placement.check_inventory(hosts, {"WATCHME_PRIVATE_ADDRESSES": "c=10.0.0.1"})
    with pytest.raises(placement.PlacementError, match="'10.0.0.300' \\(b\\) is not an IPv4"):
        placement.check_inventory(hosts, {"WATCHME_PRIVATE_ADDRESSES": "b=10.0.0.300"})
    path.write_text(yaml.safe_dump({"services": [entry("t", "172.27.0.21", 8013, host="b")]}))
    placement.check_inventory(hosts, {"WATCHME_PRIVATE_ADDRESSES": "a=10.0.0.1,b=10.0.0.2"})
    assert hosts[1][1]["private_address"] == "10.0.0.2"


def test_front_routes_other_hosts_services_to_their_private_address():
    a, b = fake_host("a", front=True), fake_host("b")
    routed = placement.routed(REGISTRY, [a, b], lambda h: {"a": "10.0.0.1", "b": "10.0.0.2"}[h.name])
    assert [s.upstream_url for s in routed] == ["http://localhost:8060/", "http://10.0.0.2:8013/"]
    with pytest.raises(placement.PlacementError, match="WATCHME_PRIVATE_ADDRESSES=b=ADDR"):
        placement.routed(REGISTRY, [a, b], lambda h: None)


def test_memory_budget_per_host_and_fixed_ips_outside_the_dynamic_range():
    big = [entry("x", "172.27.0.30", 8030, memory_limit="1g"),
           entry("y", "172.27.0.31", 8031, memory_limit="1g", host="b")]
    load_data({"services": big})  # 1 GiB on each host fits
    with pytest.raises(RegistryError, match="on host b sum to 2048 MiB"):
        load_data({"services": big + [entry("z", "172.27.0.32", 8032, memory_limit="1g", host="b")]})
    with pytest.raises(RegistryError, match=r"services\[d\]\.ip: 172\.27\.255\.9 is in network_ip_range"):
        load_data({"services": [entry("d", "172.27.255.9", 8033)]})
    assert str(Settings().dynamic_range) == "172.27.255.0/24"


def test_default_route_address_fact():
    fact = placement.DefaultRouteAddress()
    assert fact.process(["10.0.1.11"]) == "10.0.1.11" and fact.process([""]) is None


def test_swarm_init_on_the_front_and_noop_when_manager():
    from tasks import swarm
    cmds, _ = run_op(swarm.swarm_init, {"SwarmNode": {"state": "inactive", "manager": False,
                                                      "cluster": "", "node": ""}}, advertise="10.0.1.10")
    assert text(cmds) == ["docker swarm init --advertise-addr 10.0.1.10"]
    cmds, host = run_op(swarm.swarm_init, {"SwarmNode": {"state": "active", "manager": True,
                                                         "cluster": "abc", "node": "n"}}, advertise="x")
    assert cmds == [] and host.noops == ["swarm manager (cluster abc)"]
    with pytest.raises(OperationError, match="worker of another swarm"):
        run_op(swarm.swarm_init, {"SwarmNode": {"state": "active", "manager": False,
                                                "cluster": "", "node": ""}}, advertise="x")


def test_swarm_join_reads_the_token_at_run_time():
    from tasks import swarm
    cmds, _ = run_op(swarm.swarm_join, {"SwarmNode": None}, front=object(), front_address="10.0.1.10")
    assert len(cmds) == 1 and isinstance(cmds[0], FunctionCommand)  # no token in any command text
    cmds, host = run_op(swarm.swarm_join, {"SwarmNode": {"state": "active", "manager": False,
                                                         "cluster": "", "node": ""}},
                        front=object(), front_address="10.0.1.10")
    assert cmds == [] and host.noops == ["swarm worker"]


def test_firewall_inserts_missing_and_deletes_stale_rules():
    from tasks import firewall
    cmds, _ = run_op(firewall.front_only, {"FrontOnlyRules": {(8014, "10.0.1.10")}},
                     rules={(8013, "10.0.1.10")})
    assert text(cmds) == [
        "iptables -D DOCKER-USER -p tcp -m conntrack --ctorigdstport 8014 --ctdir ORIGINAL ! -s "
        "10.0.1.10/32 -m comment --comment watchme-front-only -j DROP",
        "iptables -I DOCKER-USER -p tcp -m conntrack --ctorigdstport 8013 --ctdir ORIGINAL ! -s "
        "10.0.1.10/32 -m comment --comment watchme-front-only -j DROP"]
    cmds, host = run_op(firewall.front_only, {"FrontOnlyRules": {(8013, "10.0.1.10")}},
                        rules={(8013, "10.0.1.10")})
    assert cmds == [] and host.noops


def test_firewall_fact_reads_iptables_s_output():
    from tasks import firewall
    line = ('-A DOCKER-USER ! -s 172.17.0.5/32 -p tcp -m conntrack --ctorigdstport 8013 --ctdir '
            'ORIGINAL -m comment --comment watchme-front-only -j DROP')
    assert firewall.FrontOnlyRules().process(["-N DOCKER-USER", line, "-A DOCKER-USER -j RETURN"]) \
        == {(8013, "172.17.0.5")}
    assert firewall.FrontOnlyRules().process(["@@none"]) is None


def test_overlay_create_body_is_attachable_with_the_dynamic_range():
    want = {"name": "watchme-network", "driver": "overlay", "subnet": "172.27.0.0/16",
            "gateway": "172.27.0.1", "ip_range": "172.27.255.0/24", "encrypted": False}
    body = network_repair.create_body(want)
    assert body["Attachable"] is True and "Options" not in body
    assert body["IPAM"]["Config"] == [{"Subnet": "172.27.0.0/16", "Gateway": "172.27.0.1",
                                       "IPRange": "172.27.255.0/24"}]
    assert network_repair.create_body({**want, "encrypted": True})["Options"] == {"encrypted": ""}
    bridge = network_repair.create_body({**want, "driver": "bridge"})
    # a bridge keeps its dynamic addresses in the range too (issue 12 section 4), not attachable
    assert "Attachable" not in bridge and bridge["IPAM"]["Config"][0]["IPRange"] == "172.27.255.0/24"


def test_routes_and_explain_show_the_real_target(capsys, monkeypatch):
    from watchme import routes
    monkeypatch.setenv("WATCHME_HOSTS", "a=ubuntu@10.0.0.1,b=ubuntu@10.0.0.2")
    monkeypatch.setenv("WATCHME_PRIVATE_ADDRESSES", "a=10.0.1.10,b=10.0.1.11")
    monkeypatch.setattr(routes, "load", lambda path=None: REGISTRY)
    assert routes.main(["explain", "/transcriber/x"]) == 0
    out = capsys.readouterr().out
    assert "runs on:    b" in out and "upstream:   http://10.0.1.11:8013/x" in out
    monkeypatch.delenv("WATCHME_PRIVATE_ADDRESSES")
    assert routes.main(["list"]) == 0
    row = next(l.split() for l in capsys.readouterr().out.splitlines() if l.startswith("transcriber"))
    assert row[:4] == ["transcriber", "b", "/transcriber/", "http://<b.private_address>:8013/"]
