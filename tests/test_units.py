"""tasks/units.py: systemd units from the registry, on a real test host.

A small registry (two busybox services, then a third whose name has a hand-written unit,
then one fewer) stands in for the 13 production services to keep the module fast.
"""

from __future__ import annotations

import runpy

import jinja2
import pytest

from tests import fake_services
from tests.fake_services import wait
from tests.conftest import ROOT, assert_idempotent, run_deploy

pytestmark = pytest.mark.provisioned  # e2e hosts: packages preinstalled (tests/provisioned.py)

ALPHA = {"name": "alpha", "container": "watchme-alpha", "ip": "172.27.0.6", "port": 8000, "priority": 1}
BETA = {"name": "beta", "container": "watchme-beta", "ip": "172.27.0.7", "port": 8001}
GAMMA = {"name": "gamma", "container": "watchme-gamma", "ip": "172.27.0.8", "port": 8002}
UNITS = runpy.run_path(str(ROOT / "group_data" / "all.py"))["config_root"] + "/systemd"
HAND_WRITTEN = "[Unit]\nDescription=gamma, written by hand on the server\n"


CLONE = "/home/ubuntu/watchme-server-configs"
HAS_UNIT_FIELD = "unit" in __import__("watchme.registry", fromlist=["Service"]).Service.model_fields


def render(**kw) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    data = {"service": "alpha", "description": "Alpha", "compose": "/usr/bin/docker compose",
            "compose_file": "/srv/a/docker-compose.prod.yml",
            "infra_unit": "watchme-infrastructure.service", "pull": False,
            "override_file": "/srv/a/o.yml", **kw}
    return env.get_template("service.unit.j2").render(**data)


def test_template_pull_is_optional():
    assert "pull -q" not in render()
    assert "ExecStartPre=-/usr/bin/docker compose -f /srv/a/docker-compose.prod.yml -f /srv/a/o.yml pull -q" in render(pull=True)


def test_template_orders_after_the_network_and_restarts():
    unit = render()
    assert "After=docker.service watchme-infrastructure.service\n" in unit
    assert "Requires=docker.service watchme-infrastructure.service\n" in unit
    assert "ExecStart=/usr/bin/docker compose -f /srv/a/docker-compose.prod.yml -f /srv/a/o.yml up\n" in unit
    assert "ExecStop=/usr/bin/docker compose -f /srv/a/docker-compose.prod.yml -f /srv/a/o.yml down\n" in unit
    assert "Restart=always\n" in unit


def test_template_fails_on_a_missing_variable():
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "templates"),
                             undefined=jinja2.StrictUndefined)
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("service.unit.j2").render(service="a")


def test_percent_is_escaped_for_systemd():
    from tasks.units import _escape
    assert _escape("CPU 50% max") == "CPU 50%% max"


def test_loaded_units_fact_reads_need_daemon_reload_for_all_units_at_once():
    from watchme.units import LoadedUnits
    fact = LoadedUnits()
    assert fact.command(units=["watchme-a.service", "watchme-b.service"]).startswith(
        "systemctl show -p Id -p NeedDaemonReload -p ActiveState -p SubState -p UnitFileState "
        "-- watchme-a.service watchme-b.service")
    assert fact.process(["Id=watchme-a.service", "NeedDaemonReload=yes", "ActiveState=active",
                         "SubState=running", "UnitFileState=enabled", "",
                         "ActiveState=inactive", "SubState=dead", "UnitFileState=disabled",
                         "NeedDaemonReload=no", "Id=watchme-b.service"]) == {
        "watchme-a.service": {"need_reload": True, "active": "active", "running": True,
                              "enabled": True},
        "watchme-b.service": {"need_reload": False, "active": "inactive", "running": False,
                              "enabled": False}}


def test_running_containers_fact_reads_memory_and_ips_of_running_ones():
    from watchme.units import RunningContainers
    fact = RunningContainers()
    # the host script (files/docker_api.py) when installed, else the Docker CLI (a new host)
    assert fact.command(containers=["watchme-a", "watchme-b"], script="/s/docker_api.py") == (
        "if [ -f /s/docker_api.py ] && command -v python3 >/dev/null; then python3 "
        "/s/docker_api.py running -- watchme-a watchme-b; else docker inspect -f "
        f"'{fact.FORMAT}' -- watchme-a watchme-b 2>/dev/null || true; fi")
    assert fact.process(['{"watchme-a": {"memory": 1, "files": [], "ips": {}}}']) == {
        "watchme-a": {"memory": 1, "files": [], "ips": {}}}
    assert fact.process(["/watchme-a true 33554432 files=/c.yml,/o.yml bridge=172.17.0.2 "
                         "watchme-network=172.27.0.6", "/watchme-b false 0 files=",
                         "/watchme-c true 0 files= watchme-network=172.27.0.8"]) == {
        "watchme-a": {"memory": 33554432, "files": ["/c.yml", "/o.yml"],
                      "ips": {"bridge": "172.17.0.2", "watchme-network": "172.27.0.6"}},
        "watchme-c": {"memory": 0, "files": [], "ips": {"watchme-network": "172.27.0.8"}}}
    # No container exists: no output, so pyinfra returns default() (never None: units.py reads it).
    assert fact.default() == {}


def test_container_drifted_from_its_override():
    import ipaddress
    from types import SimpleNamespace
    from watchme.units import drifted
    svc = SimpleNamespace(memory_mib=48, ip=ipaddress.ip_address("172.27.0.9"))
    net, o = "watchme-network", "/opt/watchme/compose/b.override.yml"
    ok = {"memory": 48 << 20, "files": ["/srv/b.yml", o], "ips": {net: "172.27.0.9"}}
    assert not drifted(svc, ok, net, o)
    assert not drifted(svc, None, net, o), "not running: the unit starts it"
    assert drifted(svc, {**ok, "memory": 32 << 20}, net, o)
    assert drifted(svc, {**ok, "ips": {net: "172.27.0.7"}}, net, o)
    assert not drifted(SimpleNamespace(memory_mib=48, ip=None), {**ok, "ips": {}}, net, o)
    # Adopted as the operator started it (no override): adoption restarts nothing.
    assert not drifted(svc, {**ok, "memory": 0, "files": ["/srv/b.yml"]}, net, o)


def test_unit_name_defaults_to_the_seed_convention():
    from types import SimpleNamespace
    from watchme.units import unit_name
    assert unit_name(SimpleNamespace(name="vault-api")) == "watchme-vault-api.service"
    assert unit_name(SimpleNamespace(name="x", unit="api-x.service")) == "api-x.service"


def test_only_links_into_our_unit_dir_are_ours():
    from watchme.units import ours
    units = {"watchme-a.service": "/opt/watchme/systemd/watchme-a.service",
             "watchme-b.service": "/home/ubuntu/watchme-server-configs/systemd/watchme-b.service",
             "watchme-c.service": None}
    assert ours(units, "/opt/watchme/systemd") == ["watchme-a.service"]


def test_wants_links_into_the_clone_are_pointed_at_our_unit_file():
    from watchme.units import WantsLinks, stale_wants
    wants = "/etc/systemd/system/multi-user.target.wants"
    links = WantsLinks().process([
        f"{wants}/watchme-a.service /home/ubuntu/watchme-server-configs/systemd/watchme-a.service",
        f"{wants}/watchme-b.service /opt/watchme/systemd/watchme-b.service",
        f"{wants}/watchme-c.service /etc/systemd/system/watchme-c.service",
        f"{wants}/ssh.service /lib/systemd/system/ssh.service"])
    units = {"watchme-a.service", "watchme-b.service", "watchme-c.service"}
    assert stale_wants(links, units, "/opt/watchme/systemd") == {
        f"{wants}/watchme-a.service": "/opt/watchme/systemd/watchme-a.service"}


# --- end to end -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def deploy(testhost_env):
    """conftest's deploy for a module about units: the site on :80 only (no certificate on a
    blank host) and services may leave the registry with their routes."""

    def _deploy(*args: str, env: dict[str, str] | None = None):
        return run_deploy({**testhost_env, **(env or {})}, "--json", "--data", "http_only=true",
                          "--data", "allow_route_removal=true", *args)

    return _deploy


@pytest.fixture(scope="module")
def registries(tmp_path_factory):
    d = tmp_path_factory.mktemp("registries")
    return {
        "two": {"WATCHME_REGISTRY": fake_services.registry(d / "two.yaml", [ALPHA, BETA])},
        "three": {"WATCHME_REGISTRY": fake_services.registry(d / "three.yaml", [ALPHA, BETA, GAMMA])},
        "one": {"WATCHME_REGISTRY": fake_services.registry(d / "one.yaml", [ALPHA])},
        "clash": {"WATCHME_REGISTRY": fake_services.registry(d / "clash.yaml", [ALPHA, {
            "name": "nginx", "container": "my-nginx", "ip": "172.27.0.9", "port": 8009,
            **({"unit": "nginx.service"} if HAS_UNIT_FIELD else {})}])},
    }


@pytest.fixture(scope="module")
def new_server(deploy, registries):
    """A brand-new server: no compose file is there yet."""
    run = deploy(env=registries["two"])
    assert run.rc == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def running(new_server, deploy, host, registries):
    """The services' compose files arrive; the next deploy starts the units."""
    fake_services.install(host, [ALPHA, BETA, GAMMA])
    run = deploy(env=registries["two"])
    assert run.rc == 0, run.stderr[-3000:]
    return run


@pytest.mark.e2e
def test_new_server_enables_but_does_not_start(new_server, host):
    assert "watchme-alpha.service: enabled, not started: /home/ubuntu/alpha/docker-compose.prod.yml is not on" \
        in new_server.stderr
    for name in ("alpha", "beta"):
        assert host.service(f"watchme-{name}.service").is_enabled
        assert not host.service(f"watchme-{name}.service").is_running
    infra = host.service("watchme-infrastructure.service")
    assert infra.is_enabled and infra.is_running


@pytest.mark.e2e
def test_units_rendered_and_linked(new_server, host):
    for unit in ("watchme-alpha.service", "watchme-beta.service", "watchme-infrastructure.service"):
        link = host.file(f"/etc/systemd/system/{unit}")
        assert link.is_symlink and link.linked_to == f"{UNITS}/{unit}"
    alpha = host.file(f"{UNITS}/watchme-alpha.service").content_string
    assert ("ExecStart=/usr/bin/docker-compose -f /home/ubuntu/alpha/docker-compose.prod.yml "
            "-f /opt/watchme/compose/alpha.override.yml up") in alpha


@pytest.mark.e2e
def test_systemd_analyze_verify_is_clean(new_server, host):
    r = host.run(f"systemd-analyze verify {UNITS}/watchme-alpha.service {UNITS}/watchme-beta.service "
                 f"{UNITS}/watchme-infrastructure.service")
    assert (r.rc, r.stdout, r.stderr) == (0, "", "")


@pytest.mark.e2e
def test_units_start_services_on_their_fixed_ips(running, host):
    assert "Enable and start watchme-infrastructure.service and the services" in running.changed()
    for s in (ALPHA, BETA):
        assert host.service(f"watchme-{s['name']}.service").is_running
        wait(host, f"curl -sf http://127.0.0.1:{s['port']}/ | grep -qx {s['name']}")
        ip = host.check_output("docker inspect -f '{{(index .NetworkSettings.Networks "
                               f"\"watchme-network\").IPAddress}}}}' {s['container']}")
        assert ip == s["ip"]
    # Containers reach each other by name over watchme-network (seed, section 3.2).
    out = host.check_output("docker exec watchme-alpha /bin/busybox wget -qO- http://watchme-beta:8001/")
    assert out == "beta"


@pytest.mark.e2e
def test_restarting_the_infrastructure_brings_dependants_back(running, host):
    before = host.check_output("docker inspect -f '{{.State.StartedAt}}' watchme-alpha")
    host.check_output("systemctl restart watchme-infrastructure.service")
    for s in (ALPHA, BETA):
        assert host.service(f"watchme-{s['name']}.service").is_running
        wait(host, f"curl -sf http://127.0.0.1:{s['port']}/ | grep -qx {s['name']}")
    assert host.check_output("docker inspect -f '{{.State.StartedAt}}' watchme-alpha") != before


@pytest.mark.e2e
def test_hand_written_unit_is_kept_as_a_backup(running, deploy, host, registries):
    host.run(f"printf '{HAND_WRITTEN}' > /etc/systemd/system/watchme-gamma.service")
    run = deploy(env=registries["three"])
    assert run.rc == 0, run.stderr[-3000:]
    backups = host.check_output("ls /etc/systemd/system/ | grep '^watchme-gamma.service.backup.'").split()
    assert len(backups) == 1 and len(backups[0]) == len("watchme-gamma.service.backup.20260101_120000")
    assert host.file(f"/etc/systemd/system/{backups[0]}").content_string == HAND_WRITTEN
    assert host.file("/etc/systemd/system/watchme-gamma.service").linked_to == f"{UNITS}/watchme-gamma.service"
    wait(host, "curl -sf http://127.0.0.1:8002/ | grep -qx gamma")


@pytest.mark.e2e
def test_removed_service_is_stopped_disabled_and_unlinked(gamma_present, deploy, host, registries):
    run = deploy(env=registries["one"])
    assert run.rc == 0, run.stderr[-3000:]
    for name in ("beta", "gamma"):
        assert f"Stop and disable removed service watchme-{name}.service" in run.changed()
        assert not host.file(f"/etc/systemd/system/watchme-{name}.service").exists
        # Never a delete inside the operator's clone (while config_root is still the clone).
        assert host.file(f"{UNITS}/watchme-{name}.service").exists == UNITS.startswith(CLONE + "/")
        assert host.run(f"systemctl is-enabled watchme-{name}.service").rc != 0
    assert host.run("docker inspect watchme-beta").rc != 0, "compose down removes the container"
    assert host.service("watchme-alpha.service").is_running
    assert "Reload systemd (a unit changed)" in run.changed()


@pytest.fixture(scope="module")
def gamma_present(running, deploy, host, registries):
    """Makes the removal test independent of test order: gamma exists before it runs."""
    if not host.file("/etc/systemd/system/watchme-gamma.service").is_symlink:
        assert deploy(env=registries["three"]).rc == 0


@pytest.mark.e2e
@pytest.mark.skipif(not HAS_UNIT_FIELD, reason="registry field `unit` not merged yet")
def test_name_of_an_os_unit_is_refused_before_any_change(new_server, deploy, host, registries):
    run = deploy(env=registries["clash"])
    assert run.rc != 0
    # The registry refuses it while loading, before any host is contacted.
    assert "services[nginx].unit: nginx.service is a unit of the system or of this project" \
        in run.stderr
    assert not host.file("/etc/systemd/system/nginx.service").exists
    assert not host.file(f"{UNITS}/nginx.service").exists


@pytest.mark.e2e
def test_unit_written_but_never_loaded_is_reloaded_and_restarted(running, deploy, host, tmp_path):
    """A deploy killed after writing a unit file, before daemon-reload: the file on disk is
    what the registry renders, systemd still runs the old unit. The next run must finish."""
    unit = "watchme-alpha.service"
    host.check_output(f"sed -i 's/^Description=.*/Description=Alpha v2/' {UNITS}/{unit}")
    assert host.check_output(f"systemctl show -p NeedDaemonReload {unit}") == "NeedDaemonReload=yes"
    started = host.check_output("docker inspect -f '{{.State.StartedAt}}' watchme-alpha")
    inode = host.check_output(f"stat -c %i {UNITS}/{unit}")
    env = {"WATCHME_REGISTRY": fake_services.registry(
        tmp_path / "v2.yaml", [{**ALPHA, "description": "Alpha v2"}, BETA])}
    run = deploy(env=env)
    assert run.rc == 0, run.stderr[-3000:]
    # The file was already right: not rewritten (the bundle renames a new file over it).
    assert host.check_output(f"stat -c %i {UNITS}/{unit}") == inode
    assert host.check_output(f"systemctl show -p Description {unit}") == "Description=Alpha v2"
    assert host.check_output(f"systemctl show -p NeedDaemonReload {unit}") == "NeedDaemonReload=no"
    wait(host, "curl -sf http://127.0.0.1:8000/ | grep -qx alpha")
    assert host.check_output("docker inspect -f '{{.State.StartedAt}}' watchme-alpha") != started


@pytest.mark.e2e
def test_adopting_a_running_unit_linked_into_the_clone_restarts_nothing(running, deploy, host,
                                                                        registries):
    """The seed's layout: /etc/systemd/system/<unit> links into the operator's git clone."""
    clone = "/home/ubuntu/watchme-server-configs-clone/systemd"
    unit = "watchme-beta.service"
    host.check_output(f"mkdir -p {clone} && cp -L /etc/systemd/system/{unit} {clone}/{unit} && "
                      f"ln -sfn {clone}/{unit} /etc/systemd/system/{unit} && systemctl daemon-reload")
    started = host.check_output("docker inspect -f '{{.State.StartedAt}}' watchme-beta")
    run = deploy(env=registries["two"])
    assert run.rc == 0, run.stderr[-3000:]
    assert host.file(f"/etc/systemd/system/{unit}").linked_to == f"{UNITS}/{unit}"
    assert host.file(f"{clone}/{unit}").exists, "the clone's file is never deleted"
    assert host.check_output("docker inspect -f '{{.State.StartedAt}}' watchme-beta") == started


@pytest.mark.e2e
def test_second_run_changes_nothing(running, deploy, registries):
    # Tests above leave two or three services: settle on one, then the gate.
    assert deploy(env=registries["one"]).rc == 0
    assert_idempotent(deploy, env=registries["one"])

