"""The shipped registry matches the seed, and every kind of mistake is rejected with a
message naming the entry, the field and the fix."""

import copy
import sys
from pathlib import Path

import pytest
import yaml

# Importable without installing the package (pyproject.toml sets no pythonpath).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchme.registry import DEFAULT_PATH, RegistryError, load, load_data
from watchme.settings import Settings

# The seed's table "現在の接続状況" (13 containers on watchme-network).
SEED_CONTAINERS = {
    "watchme-scheduler-prod": "172.27.0.2",
    "api-transcriber": "172.27.0.3",
    "watchme-api-manager-prod": "172.27.0.4",
    "opensmile-aggregator": "172.27.0.5",
    "watchme-vault-api": "172.27.0.6",
    "api_gen_prompt_mood_chart": "172.27.0.7",
    "api-gpt-v1": "172.27.0.8",
    "watchme-web-prod": "172.27.0.9",
    "vibe-transcriber-v2": "172.27.0.10",
    "api_sed_v1-sed_api-1": "172.27.0.11",
    "opensmile-api": "172.27.0.12",
    "watchme-admin": "172.27.0.13",
    "api-sed-aggregator": "172.27.0.14",
}


# --- the shipped registry ---------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    return load()


def test_shipped_registry_has_the_seed_containers_and_ips(shipped):
    assert len(shipped.services) >= 14
    ips = {s.container: str(s.ip) for s in shipped.services}
    for container, ip in SEED_CONTAINERS.items():
        assert ips.get(container) == ip, container


def test_shipped_scheduler_transcriber_avatar_as_in_the_seed(shipped):
    sched = shipped.by_name("scheduler")
    assert (sched.container, sched.port) == ("watchme-scheduler-prod", 8015)
    assert sched.upstream_url == "http://localhost:8015/api/scheduler/"
    assert sched.probe_url_path == "/scheduler/status/whisper"

    whisper = shipped.by_name("transcriber")
    assert (whisper.container, whisper.port, whisper.memory_mib) == ("api-transcriber", 8001, 1024)
    assert whisper.timeouts.read == "300s"
    assert whisper.compose_file == "/home/ubuntu/api_whisper_v1/docker-compose.prod.yml"

    avatar = shipped.by_name("avatar")
    assert avatar.port == 8014 and avatar.upstream_url == "http://localhost:8014/"
    assert avatar.public_path == "/avatar/" and avatar.max_body_size.lower() == "10m"
    assert avatar.cors_origins == ["*"]
    assert avatar.methods == ["GET", "POST", "DELETE", "OPTIONS"]
    assert str(avatar.ip) == "172.27.0.15" and "ip" in avatar.assumed


def test_shipped_memory_fits_the_host(shipped):
    used = sum(s.memory_mib for s in shipped.enabled_services)
    defaults = Settings()
    assert used + defaults.memory_os_reserve_mib <= defaults.host_memory_mib
    assert shipped.by_name("transcriber").memory_mib == 1024


def test_shipped_ports_follow_conventions_and_admin_tools_are_9000s(shipped):
    for s in shipped.services:
        assert 8000 <= s.port <= 8099 or 9000 <= s.port <= 9099 or s.port_override, s.name
    assert 9000 <= shipped.by_name("api-manager").port <= 9099
    assert 9000 <= shipped.by_name("admin").port <= 9099


def test_shipped_guesses_are_marked_assumed(shipped):
    # The seed gives no port for these; the registry must say the value is a guess.
    for name in ("vault", "opensmile-aggregator", "web", "admin", "api-manager"):
        assert "port" in shipped.by_name(name).assumed, name
    assert "port" not in shipped.by_name("scheduler").assumed


def test_shipped_lower_priority_for_what_the_seed_stops_first(shipped):
    worst = max(s.priority for s in shipped.services)
    for name in ("opensmile-aggregator", "sed-aggregator"):
        assert shipped.by_name(name).priority == worst


# --- a small valid registry to break --------------------------------------------------

BASE = {"services": [
    {"name": "alpha", "description": "a", "container": "alpha-c", "ip": "172.27.0.20", "port": 8020,
     "public_path": "/alpha/", "upstream_path": "/api/alpha/", "memory_limit": "64m", "priority": 1,
     "compose_file": "/home/ubuntu/alpha/docker-compose.prod.yml"},
    {"name": "beta", "description": "b", "container": "beta-c", "ip": "172.27.0.21", "port": 8021,
     "public_path": "/beta/", "upstream_path": "/", "memory_limit": "1g", "priority": 2,
     "compose_file": "/home/ubuntu/beta/docker-compose.prod.yml"},
]}


def broken(**changes):
    """BASE with alpha's fields changed (None deletes the field)."""
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            del data["services"][0][key]
        else:
            data["services"][0][key] = value
    return data


def errors(data):
    with pytest.raises(RegistryError) as e:
        load_data(data)
    return str(e.value)


def test_base_is_valid_and_defaults_apply():
    reg = load_data(copy.deepcopy(BASE))
    alpha, beta = reg.services
    assert alpha.methods == ["GET", "POST", "OPTIONS"] and alpha.cors_origins == []
    assert (alpha.max_body_size, alpha.upstream_host) == ("1m", "localhost")
    assert (alpha.timeouts.connect, alpha.timeouts.read, alpha.timeouts.send) == ("5s", "60s", "60s")
    assert (alpha.probe.path, alpha.probe.expect) == ("", 200)
    assert alpha.enabled and alpha.start and not alpha.port_override and alpha.assumed == []
    assert beta.memory_mib == 1024 and alpha.memory_mib == 64
    assert alpha.probe_url_path == "/alpha/"


def test_unknown_key_names_it_and_lists_allowed_keys():
    msg = errors(broken(pubic_path="/x/"))
    assert "services[alpha].pubic_path: unknown key" in msg
    assert "did you mean 'public_path'" in msg and "allowed keys: name, description" in msg


def test_unknown_nested_key():
    msg = errors(broken(timeouts={"idle": "5s"}))
    assert "services[alpha].timeouts.idle: unknown key" in msg and "connect, read, send" in msg


def test_unknown_top_level_key():
    data = copy.deepcopy(BASE)
    data["servics"] = []
    assert "unknown top-level key 'servics'" in errors(data)


def test_missing_required_field():
    assert "services[alpha].priority: required field is missing" in errors(broken(priority=None))


@pytest.mark.parametrize("field, value", [
    ("public_path", "/beta/"), ("port", 8021), ("container", "beta-c"), ("ip", "172.27.0.21"),
])
def test_duplicates_name_both_entries(field, value):
    msg = errors(broken(**{field: value}))
    assert f"services[beta].{field}:" in msg and "also used by services[alpha]" in msg


def test_duplicate_name_gives_both_positions():
    msg = errors(broken(name="beta"))
    assert "services[beta].name: 'beta' names entries 1 and 2" in msg


@pytest.mark.parametrize("port", [3001, 8100, 8999, 9100, 80])
def test_port_outside_conventions(port):
    msg = errors(broken(port=port))
    assert f"services[alpha].port: {port} is outside the port conventions" in msg
    assert "port_override: true" in msg


def test_port_override_allows_it():
    assert load_data(broken(port=3001, port_override=True)).services[0].port == 3001


@pytest.mark.parametrize("ip", ["10.0.0.5", "172.28.0.2", "172.27.0.1", "172.27.0.0", "172.27.255.255"])
def test_ip_outside_network_or_reserved(ip):
    assert f"services[alpha].ip: {ip} is not a usable address of watchme-network" in errors(broken(ip=ip))


def test_ip_not_an_address():
    assert "services[alpha].ip:" in errors(broken(ip="172.27.0.300"))


def test_ip_is_required_but_may_be_null_off_network():
    assert "services[alpha].ip: required field is missing" in errors(broken(ip=None))
    data = copy.deepcopy(BASE)
    data["services"][0]["ip"] = None
    assert load_data(data).services[0].ip is None


@pytest.mark.parametrize("size", ["10MB", "ten", "1.5m", "-1m", ""])
def test_invalid_size(size):
    assert "services[alpha].max_body_size:" in errors(broken(max_body_size=size))


@pytest.mark.parametrize("size", ["10M", "10m", "512k", "1g", "1024"])
def test_valid_sizes(size):
    assert load_data(broken(max_body_size=size)).services[0].max_body_size == size


@pytest.mark.parametrize("value", ["5 sec", "-1s", "1.5s", "s", "5S", "1m 30s", "30s1m", "1m1m", "1m30"])
def test_invalid_time(value):
    msg = errors(broken(timeouts={"read": value}))
    assert f"services[alpha].timeouts.read: {value!r} is invalid; use an nginx time" in msg


@pytest.mark.parametrize("value", ["300s", "5m", "1m30s", "1h30m15s", "500ms", "60"])
def test_valid_times(value):
    assert load_data(broken(timeouts={"read": value})).services[0].timeouts.read == value


@pytest.mark.parametrize("method", ["get", "FETCH", "CONNECT"])
def test_invalid_method(method):
    assert "services[alpha].methods[1]:" in errors(broken(methods=["GET", method]))


@pytest.mark.parametrize("field", ["public_path", "upstream_path"])
def test_paths_must_start_with_slash(field):
    msg = errors(broken(**{field: "alpha/"}))
    assert f"services[alpha].{field}: 'alpha/' is invalid; start with '/'" in msg


def test_slash_rule_missing_upstream_slash_gives_bfoo():
    msg = errors(broken(public_path="/a/", upstream_path="/b"))
    assert "services[alpha].upstream_path:" in msg
    assert "nginx would send /a/foo upstream as /bfoo" in msg and "'/b/'" in msg


def test_slash_rule_extra_upstream_slash_gives_double_slash():
    msg = errors(broken(public_path="/a", upstream_path="/b/"))
    assert "services[alpha].upstream_path:" in msg
    assert "nginx would send /a/foo upstream as /b//foo" in msg and "end public_path with '/'" in msg


@pytest.mark.parametrize("value", ["1gb", "512", "64 m", "1.5g", "0m"])
def test_invalid_memory_limit(value):
    assert "services[alpha].memory_limit:" in errors(broken(memory_limit=value))


def test_memory_budget():
    msg = errors(broken(memory_limit="700m"))  # 700 + 1024 + 300 > 1900
    assert "sum to 1724 MiB + 300 MiB OS reserve > 1900 MiB" in msg


def test_disabled_service_is_outside_the_budget_and_routes():
    reg = load_data(broken(memory_limit="700m", enabled=False))
    assert [s.name for s in reg.enabled_services] == ["beta"]
    assert reg.by_name("alpha").enabled is False


@pytest.mark.parametrize("changes, field", [
    ({"cors_origins": ["hey-watch.me"]}, "cors_origins[0]"),
    ({"probe": {"path": "/health"}}, "probe.path"),
    ({"probe": {"expect": 999}}, "probe.expect"),
    ({"compose_file": "alpha/docker-compose.yml"}, "compose_file"),
    ({"name": "Alpha"}, "name"),
    ({"priority": 0}, "priority"),
    ({"assumed": ["prot"]}, "assumed"),
    ({"description": "two\nlines"}, "description"),
    ({"upstream_host": "local host"}, "upstream_host"),
])
def test_other_field_checks(changes, field):
    label = "#1" if "name" in changes else "alpha"  # an invalid name is never printed as a label
    assert f"services[{label}].{field}:" in errors(broken(**changes))


def test_every_problem_is_listed_one_per_line():
    data = broken(port=3001)
    data["services"][1].update(max_body_size="10MB", pubic="x", public_path="/alpha/")
    lines = errors(data).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "services[alpha].port", "services[beta].max_body_size", "services[beta].pubic",
        "services[beta].public_path"]


def test_cross_field_checks_wait_for_the_fields_to_parse():
    # The port range check needs a valid entry; it is reported on the next run.
    msg = errors(broken(port=3001, max_body_size="10MB"))
    assert "max_body_size" in msg and "port" not in msg


def test_by_name_unknown():
    with pytest.raises(KeyError, match="known: alpha, beta"):
        load_data(copy.deepcopy(BASE)).by_name("gamma")


def test_load_from_path_and_errors(tmp_path):
    good = tmp_path / "services.yaml"
    good.write_text(yaml.safe_dump(BASE))
    assert [s.name for s in load(good).services] == ["alpha", "beta"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [\n")
    with pytest.raises(RegistryError, match="cannot read the registry"):
        load(bad)
    with pytest.raises(RegistryError, match="cannot read the registry"):
        load(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(RegistryError, match="'services:' list"):
        load(empty)


def test_default_path_is_the_shipped_file():
    assert DEFAULT_PATH.parts[-2:] == ("group_data", "services.yaml") and DEFAULT_PATH.is_file()


# --- hardening: no value reaches a shell, a unit or nginx unchecked (issue 10 §2) ---------

CONTROL = ["\r", "\n", "\t", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\u202e"]


@pytest.mark.parametrize("char", CONTROL)
@pytest.mark.parametrize("field", ["description", "container", "public_path", "upstream_path",
                                   "upstream_host", "compose_file", "memory_limit", "max_body_size",
                                   "unit"])
def test_every_string_field_rejects_control_characters(field, char):
    value = {"description": "ok", "container": "alpha-c", "public_path": "/alpha/",
             "upstream_path": "/api/alpha/", "upstream_host": "localhost",
             "compose_file": "/srv/a.yml", "memory_limit": "64m", "max_body_size": "1m",
             "unit": "watchme-alpha.service"}[field]
    msg = errors(broken(**{field: value[:2] + char + value[2:]}))
    assert f"services[alpha].{field}:" in msg
    assert all(c not in msg for c in CONTROL if c != "\n"), "the message echoes the raw value"


@pytest.mark.parametrize("char", CONTROL)
def test_nested_strings_reject_control_characters(char):
    assert "services[alpha].probe.path:" in errors(broken(probe={"path": "st" + char + "atus"}))
    assert "services[alpha].timeouts.read:" in errors(broken(timeouts={"read": "6" + char + "0s"}))
    assert "services[alpha].methods[0]:" in errors(broken(methods=["GET" + char]))
    assert "services[alpha].cors_origins[0]:" in errors(broken(cors_origins=["https://a" + char]))


@pytest.mark.parametrize("value", [
    "x'$(touch /tmp/pwned)'", "$(touch /tmp/pwned)", "`touch /tmp/pwned`", "a${IFS}b", "a;b",
    "a b", 'a"b', "a'b", "{x}", "a\\b", "?q=$(id)", "a?x=1&y=2", "a|b", "a>b", "a*b", "/abs",
])
def test_probe_path_refuses_shell_and_nginx_metacharacters(value):
    assert "services[alpha].probe.path:" in errors(broken(probe={"path": value}))


@pytest.mark.parametrize("value", ["", "status", "status/whisper", "health?full=1", "v1.2/x_y~z-"])
def test_probe_path_accepts_plain_paths_and_a_query(value):
    assert load_data(broken(probe={"path": value})).services[0].probe.path == value


@pytest.mark.parametrize("value", ["50% done", "back\\", "a\\nExecStartPre=/bin/sh", "x" * 201, ""])
def test_description_refuses_what_systemd_interprets(value):
    assert "services[alpha].description:" in errors(broken(description=value))


def test_description_may_be_japanese():
    text = "スケジューラー API（Whisper の定期実行）"
    assert load_data(broken(description=text)).services[0].description == text


@pytest.mark.parametrize("value", ["/a/../b.yml", "/a//b.yml", "/a/./b.yml", "/a/b/", "//a.yml",
                                   "/a/b c.yml", "/a/$(id).yml", "/a/%n.yml", "a/b.yml", "/a/'b'.yml",
                                   "/a/b;c.yml"])
def test_compose_file_is_a_normalised_absolute_safe_path(value):
    assert "services[alpha].compose_file:" in errors(broken(compose_file=value))


def test_unit_defaults_to_the_seed_convention_and_may_be_set():
    reg = load_data(copy.deepcopy(BASE))
    assert [s.unit for s in reg.services] == ["watchme-alpha.service", "watchme-beta.service"]
    assert load_data(broken(unit="api-alpha.service")).services[0].unit == "api-alpha.service"


@pytest.mark.parametrize("unit", [
    "ssh.service", "sshd.service", "nginx.service", "docker.service", "containerd.service",
    "systemd-journald.service", "systemd-networkd.service", "cron.service", "dbus.service",
    "networking.service", "getty.service", "watchme-infrastructure.service", "watchme-guard.service",
])
def test_unit_never_replaces_a_system_or_project_unit(unit):
    msg = errors(broken(unit=unit))
    assert f"services[alpha].unit: {unit} is a unit of the system or of this project" in msg


@pytest.mark.parametrize("unit", ["alpha", "alpha.timer", "a b.service", "x@y.service", "../x.service",
                                  "a/b.service", ".service"])
def test_unit_name_shape(unit):
    assert "services[alpha].unit:" in errors(broken(unit=unit))


@pytest.mark.parametrize("name", ["guard", "infrastructure"])
def test_default_unit_of_a_name_can_collide_too(name):
    assert f"services[{name}].unit: watchme-{name}.service is a unit" in errors(broken(name=name))


def test_units_are_unique_and_not_the_infrastructure_unit():
    data = broken(unit="watchme-beta.service")
    assert "services[beta].unit: watchme-beta.service is also the unit of services[alpha]" in errors(data)
    custom = Settings(infra_unit="watchme-alpha.service")
    with pytest.raises(RegistryError, match=r"services\[alpha\]\.unit: .*\(infra_unit\)"):
        load_data(copy.deepcopy(BASE), custom)


@pytest.mark.parametrize("value", ["169.254.169.254", "169.254.1.1", "0.0.0.0", "2852039166",
                                   "0xa9.0xfe.0xa9.0xfe", "0251.0376.0251.0376", "169.254.43518",
                                   "metadata.google.internal", "instance-data.ec2.internal",
                                   "fe80::1", "[fd00:ec2::254]", "fd00:ec2::254", "0"])
def test_upstream_host_never_link_local_or_metadata(value):
    assert "services[alpha].upstream_host:" in errors(broken(upstream_host=value))


@pytest.mark.parametrize("value", ["localhost", "127.0.0.1", "172.27.0.5", "watchme-vault-api"])
def test_upstream_host_allows_services(value):
    assert load_data(broken(upstream_host=value)).services[0].upstream_host == value


@pytest.mark.parametrize("size", ["0", "0m", "000k"])
def test_body_size_zero_needs_the_explicit_flag(size):
    assert "services[alpha].max_body_size:" in errors(broken(max_body_size=size))
    assert "max_body_unlimited: true" in errors(broken(max_body_size=size))
    ok = load_data(broken(max_body_size=size, max_body_unlimited=True)).services[0]
    assert ok.max_body_unlimited and ok.max_body_size == size
    assert "services[alpha].max_body_unlimited:" in errors(broken(max_body_unlimited=True))


@pytest.mark.parametrize("field, value", [
    ("port", 8020.0), ("port", "8020"), ("port", True), ("priority", 1.0), ("priority", True),
    ("enabled", "yes"), ("enabled", 1), ("start", "true"), ("port_override", 1),
    ("ip", 2887450644), ("memory_limit", 64), ("description", 5),
])
def test_integers_and_booleans_are_strict(field, value):
    assert f"services[alpha].{field}:" in errors(broken(**{field: value}))


def test_probe_expect_is_a_strict_integer():
    assert "services[alpha].probe.expect:" in errors(broken(probe={"expect": 200.0}))
    assert "services[alpha].probe.expect:" in errors(broken(probe={"expect": "200"}))


@pytest.mark.parametrize("field, value", [("memory_limit", "٣m"), ("max_body_size", "١m"),
                                          ("timeouts", {"read": "٥s"})])
def test_unicode_digits_are_not_digits(field, value):
    assert f"services[alpha].{field}" in errors(broken(**{field: value}))


def test_public_path_must_be_normalised():
    msg = errors(broken(public_path="/a//b/", upstream_path="/"))
    assert "services[alpha].public_path: '/a//b/' is not a normalised path" in msg and "'/a/b/'" in msg


def test_public_path_above_the_root_is_a_problem_not_a_crash():
    # Found by hypothesis (test_registry_fuzz): uri.normalize raised its ValueError through load.
    msg = errors(broken(public_path="/../", upstream_path="/"))
    assert "services[alpha].public_path: '/../' climbs above the root with '..'" in msg


def test_an_invalid_name_is_never_echoed_as_a_label():
    msg = errors(broken(name="x\r\nExecStartPre=/bin/sh"))
    assert "services[#1].name:" in msg and "\r" not in msg and "ExecStartPre=/bin/sh\n" not in msg


def test_settings_reach_the_registry_checks():
    data = copy.deepcopy(BASE)
    for s, ip in zip(data["services"], ["10.9.0.20", "10.9.0.21"]):
        s["ip"] = ip
    other = Settings(network_subnet="10.9.0.0/16", network_gateway="10.9.0.1")
    assert str(load_data(copy.deepcopy(data), other).services[0].ip) == "10.9.0.20"
    assert "services[alpha].ip: 10.9.0.20 is not a usable address of watchme-network 172.27.0.0/16" \
        in errors(data)
    small = Settings(host_memory_mib=1100, memory_os_reserve_mib=100)
    with pytest.raises(RegistryError, match="1088 MiB \\+ 100 MiB OS reserve > 1100 MiB"):
        load_data(copy.deepcopy(BASE), small)
