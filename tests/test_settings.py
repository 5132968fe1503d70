"""watchme/settings.py: every key of group_data/all.py typed and bounded, checked before SSH
(with the run's --data) and again per host; all.py, Settings and the README agree."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyinfra.api.exceptions import DeployError

from watchme.registry import RegistryError, load
from watchme.settings import Settings, SettingsError, cli_data, keys, require, validate

ROOT = Path(__file__).resolve().parent.parent
ALL = ROOT / "group_data" / "all.py"
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def all_py_assignments() -> dict[str, tuple[object, list[str]]]:
    """all.py's top-level keys: name -> (value, the comment lines right above it)."""
    src = ALL.read_text()
    lines = src.splitlines()
    out = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            i, comments = node.lineno - 2, []
            while i >= 0 and lines[i].startswith("#"):
                comments.insert(0, lines[i])
                i -= 1
            out[node.targets[0].id] = (ast.literal_eval(node.value), comments)
    return out


def problems(data) -> str:
    with pytest.raises(SettingsError) as e:
        validate(data)
    return str(e.value)


# --- all.py, Settings and README say the same thing --------------------------------------

def test_every_all_py_key_is_a_setting_with_one_comment():
    found = all_py_assignments()
    assert sorted(found) == sorted(keys())
    for name, (_, comments) in found.items():
        assert comments, f"{name} has no comment in group_data/all.py"


def test_all_py_values_are_the_settings_defaults():
    values = {k: v for k, (v, _) in all_py_assignments().items()}
    assert validate(values) == Settings()


def test_every_setting_has_a_description():
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_readme_table_lists_every_key_with_its_default():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Settings"):]
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|", section, re.M)
    defaults = {k: v for k, (v, _) in all_py_assignments().items()}
    assert [k for k, _ in rows] == list(defaults)
    for key, default in rows:
        assert ast.literal_eval(default) == defaults[key], key


def test_new_keys_and_defaults():
    s = Settings()
    assert (s.config_root, s.http_only, s.tls_self_signed, s.compose_pull) == ("/opt/watchme", False, False, True)
    assert (s.allow_route_removal, s.allow_older, s.lock_wait_seconds) == (False, False, 0)
    assert s.tls_certificate == "/etc/letsencrypt/live/api.hey-watch.me/fullchain.pem"
    assert s.tls_certificate_key == "/etc/letsencrypt/live/api.hey-watch.me/privkey.pem"
    assert (s.ecr_registry, s.ecr_region) == ("754724220380.dkr.ecr.ap-southeast-2.amazonaws.com",
                                               "ap-southeast-2")


def test_group_files_hold_only_settings():
    for group in ("testhost", "production"):
        ns: dict = {}
        exec((ROOT / "group_data" / f"{group}.py").read_text(), ns)
        values = {k: v for k, v in ns.items() if not k.startswith("__")}
        assert set(values) <= set(keys()), group
        validate(values)
    ns = {}
    exec((ROOT / "group_data" / "testhost.py").read_text(), ns)
    assert (ns["compose_pull"], ns["tls_self_signed"]) == (False, True)


# --- every value is typed and bounded ------------------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("swap_size_mib", 2.5), ("swap_size_mib", "2048"), ("swap_size_mib", True), ("swap_size_mib", 0),
    ("network_repair", "yes"), ("network_repair", 1), ("disk_prune_threshold", 0),
    ("disk_prune_threshold", 101), ("memory_warn_share", 1.5), ("memory_warn_share", "0.8"),
    ("lock_wait_seconds", -1), ("nginx_backups_keep", 0), ("_sudo", "true"),
    ("config_root", "opt/watchme"), ("config_root", "/opt/../etc"), ("config_root", "/opt/w atch"),
    ("config_root", "/opt/$(id)"), ("config_root_mode", "999"), ("config_root_owner", "root;id"),
    ("server_name", "api.hey-watch.me;"), ("server_name", "a b"), ("server_name", "api\r.x"),
    ("tls_certificate", "/etc/ssl/a b.pem"), ("network_subnet", "172.27.0.0/33"),
    ("network_subnet", 5), ("network_gateway", "172.27.0.300"), ("network_driver", "macvlan"), ("network_scope", "multi"),
    ("infra_unit", "watchme infra.service"), ("guard_interval", "5 minutes;"),
    ("bootstrap_packages", ["nginx", "curl; id"]), ("ecr_registry", "evil.example.com"),
    ("ecr_region", "ap southeast"), ("compose_candidates", []),
])
def test_bad_value_names_the_key_and_the_fix(key, value):
    msg = problems({key: value})
    assert msg.startswith(f"settings.{key.lstrip('_') if key == '_sudo' else key}") or \
        f"settings.{key}" in msg, msg
    assert "--data" in msg and "group_data/" in msg


def test_cli_style_values_are_accepted():
    # pyinfra's --data turns 755 and 300 into integers; mode and time span stay strings.
    s = validate({"config_root_mode": 750, "guard_interval": 300, "memory_warn_share": 1})
    assert (s.config_root_mode, s.guard_interval) == ("750", "300")


def test_gateway_must_be_in_the_subnet():
    msg = problems({"network_subnet": "10.9.0.0/16"})
    assert "settings.network_gateway: 172.27.0.1 is not a usable address of network_subnet 10.9.0.0/16" in msg
    assert validate({"network_subnet": "10.9.0.0/16", "network_gateway": "10.9.0.1"}).network_gateway


def test_host_data_extras_are_ignored():
    assert validate({"ssh_hostname": "x", "testhost_container": "y"}) == Settings()


def test_validate_runs_the_registry_checks_with_these_settings():
    data = {"network_subnet": "10.9.0.0/16", "network_gateway": "10.9.0.1", "registry": load()}
    with pytest.raises(RegistryError, match=r"services\[vault\]\.ip: 172\.27\.0\.6 is not a usable "
                                            r"address of watchme-network 10\.9\.0\.0/16"):
        validate(data)
    with pytest.raises(RegistryError, match="OS reserve > 1800 MiB"):
        validate({"host_memory_mib": 1800, "registry": load()})


def test_require_is_a_deploy_error_naming_the_host():
    host = SimpleNamespace(name="127.0.0.1:2222", data={"disk_prune_threshold": 0})
    with pytest.raises(DeployError, match=r"127\.0\.0\.1:2222: invalid settings:\nsettings\.disk_prune_threshold"):
        require(host)
    assert require(SimpleNamespace(name="h", data={})) == Settings()


def test_cli_data_parses_like_pyinfra():
    argv = ["pyinfra", "-y", "--data", "network_repair=true", "--data=swap_size_mib=1024",
            "--data", "network_subnet=10.9.0.0/16", "inventory.py", "deploy.py"]
    assert cli_data(argv) == {"network_repair": True, "swap_size_mib": 1024,
                              "network_subnet": "10.9.0.0/16"}


# --- before SSH: pyinfra stops in group_data, with the run's --data -------------------------

def run_pyinfra(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    state = tmp_path / "host.json"  # a target that does not exist: nothing may connect to it
    state.write_text('{"port": 1, "user": "root", "key": "/nonexistent", '
                     '"known_hosts": "/nonexistent", "name": "none"}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHME_")}
    env["WATCHME_TESTHOST"] = str(state)
    return subprocess.run([PYINFRA, "-y", *args, "inventory.py", "deploy.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_data_override_reaches_the_registry_check_before_ssh(tmp_path):
    run = run_pyinfra("--data", "network_subnet=10.9.0.0/16", "--data", "network_gateway=10.9.0.1",
                      tmp_path=tmp_path)
    assert run.returncode != 0
    assert "services[vault].ip: 172.27.0.6 is not a usable address of watchme-network 10.9.0.0/16" \
        in run.stderr
    assert "Connecting to hosts" not in run.stderr


def test_bad_override_stops_before_ssh(tmp_path):
    run = run_pyinfra("--data", "swap_size_mib=2.5", tmp_path=tmp_path)
    assert run.returncode != 0
    assert "settings.swap_size_mib: Input should be a valid integer" in run.stderr
    assert "Connecting to hosts" not in run.stderr


def test_importing_the_registry_loads_no_cli_code():
    code = ("import sys, watchme.registry, watchme.settings, watchme.uri; "
            "print(sorted(m for m in sys.modules if m in ('argparse', 'watchme.routes', 'pyinfra', "
            "'pyinfra_cli', 'click')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert "watchme.registry" not in (ROOT / "watchme" / "uri.py").read_text()
