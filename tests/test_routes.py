"""nginx's proxy_pass URI rule, longest-prefix location matching, and the routes CLI."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# Importable without installing the package (pyproject.toml sets no pythonpath).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchme.registry import load, load_data
from watchme.routes import main, match, normalize, upstream_uri

ROOT = Path(__file__).resolve().parent.parent


def test_incident_scheduler_status_whisper():
    """Seed, section 1: /scheduler/status/whisper answered 404 because proxy_pass had '/'."""
    sched = load().by_name("scheduler")
    request = "/scheduler/status/whisper"
    assert sched.upstream_base + upstream_uri(sched.public_path, sched.upstream_url, request) == \
        "http://localhost:8015/api/scheduler/status/whisper"
    # The old, wrong config: the location prefix was replaced by '/' and the API answered 404.
    assert upstream_uri("/scheduler/", "http://localhost:8015/", request) == "/status/whisper"


@pytest.mark.parametrize("location, proxy_pass, request_uri, expected", [
    # the nginx documentation's example: location /name/ { proxy_pass http://127.0.0.1/remote/; }
    ("/name/", "http://127.0.0.1/remote/", "/name/foo", "/remote/foo"),
    ("/avatar/", "http://localhost:8014/", "/avatar/upload", "/upload"),
    ("/avatar/", "http://localhost:8014/", "/avatar/", "/"),
    # the query string passes through
    ("/scheduler/", "http://localhost:8015/api/scheduler/", "/scheduler/s?x=1&y=2", "/api/scheduler/s?x=1&y=2"),
    # the normalized URI is what gets replaced: slashes merged, . and .. resolved
    ("/scheduler/", "http://localhost:8015/api/scheduler/", "/scheduler//status/./whisper", "/api/scheduler/status/whisper"),
    ("/a/", "http://h/b/", "/a/x/../y", "/b/y"),
    # without a URI in proxy_pass the request URI goes upstream as the client sent it
    ("/name/", "http://127.0.0.1", "/name//foo?q=1", "/name//foo?q=1"),
    ("/name/", "http://127.0.0.1:8000", "/name/foo", "/name/foo"),
    # the two slash mistakes the registry rejects
    ("/a/", "http://h/b", "/a/foo", "/bfoo"),
    ("/a", "http://h/b/", "/a/foo", "/b//foo"),
])
def test_upstream_uri(location, proxy_pass, request_uri, expected):
    assert upstream_uri(location, proxy_pass, request_uri) == expected


@pytest.mark.parametrize("location, proxy_pass, request_uri", [
    ("/a/", "http://h/b/", "/other/foo"),   # not this location
    ("/a/", "http://h/b/", "/a/../../x"),   # above the root: nginx answers 400
    ("/a/", "unix:/tmp/s", "/a/x"),         # not an http proxy_pass
])
def test_upstream_uri_rejects(location, proxy_pass, request_uri):
    with pytest.raises(ValueError):
        upstream_uri(location, proxy_pass, request_uri)


@pytest.mark.parametrize("path, expected", [
    ("/", "/"), ("//a//b", "/a/b"), ("/a/b/", "/a/b/"), ("/a/./b", "/a/b"), ("/a/b/..", "/a/"),
    ("/a/..", "/"), ("/a/.", "/a/"),
])
def test_normalize(path, expected):
    assert normalize(path) == expected


def _registry(*paths, disabled=()):
    entries = []
    for i, p in enumerate(paths):
        entries.append({"name": f"s{i}", "description": p, "container": f"c{i}", "ip": f"172.27.1.{i + 2}",
                        "port": 8020 + i, "public_path": p, "upstream_path": "/", "memory_limit": "32m",
                        "priority": 1, "compose_file": f"/srv/{i}.yml", "enabled": p not in disabled})
    return load_data({"services": entries})


def test_match_longest_prefix():
    reg = _registry("/api/", "/api/v2/", "/apiv2/")
    assert match(reg, "/api/v2/users").public_path == "/api/v2/"
    assert match(reg, "/api/v1/users").public_path == "/api/"
    assert match(reg, "/apiv2/x?y=/api/v2/").public_path == "/apiv2/"
    assert match(reg, "/api//v2/x").public_path == "/api/v2/"   # matched after normalization
    assert match(reg, "/api") is None                            # nginx: 301 to /api/, see CLI
    assert match(reg, "/nothing") is None


def test_match_skips_disabled():
    reg = _registry("/api/", "/api/v2/", disabled=("/api/v2/",))
    assert match(reg, "/api/v2/users").public_path == "/api/"


def test_match_shipped_registry():
    reg = load()
    assert match(reg, "/scheduler/status/whisper").name == "scheduler"
    assert match(reg, "/avatar/upload").name == "avatar"
    assert match(reg, "/unknown/") is None


# --- CLI --------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _no_registry_env(monkeypatch):
    monkeypatch.delenv("WATCHME_REGISTRY", raising=False)


ONLY = {"services": [{"name": "only", "description": "d", "container": "c", "ip": None, "port": 8030,
                      "public_path": "/only/", "upstream_path": "/v1/", "memory_limit": "32m",
                      "priority": 1, "compose_file": "/srv/only.yml"}]}


def test_cli_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert len(rows) == len(load().enabled_services)
    assert rows["scheduler"][1:] == ["front", "/scheduler/", "http://localhost:8015/api/scheduler/",
                                     "/scheduler/example", "http://localhost:8015/api/scheduler/example"]
    assert rows["avatar"][-1] == "http://localhost:8014/example"


def test_cli_explain_full_url_subprocess():
    run = subprocess.run(
        [sys.executable, "-m", "watchme.routes", "explain", "https://api.hey-watch.me/scheduler/status/whisper?x=1"],
        cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "service:    scheduler (watchme-scheduler-prod)" in run.stdout
    assert "upstream:   http://localhost:8015/api/scheduler/status/whisper?x=1" in run.stdout


def test_cli_explain_path(capsys):
    assert main(["explain", "/scheduler/status/whisper"]) == 0
    assert "http://localhost:8015/api/scheduler/status/whisper\n" in capsys.readouterr().out


def test_cli_explain_no_route_is_404(capsys):
    assert main(["explain", "https://api.hey-watch.me/nope/x"]) == 1
    err = capsys.readouterr().err
    assert "no location matches /nope/x: nginx would answer 404" in err and "/scheduler/" in err


def test_cli_explain_bare_prefix_is_a_redirect(capsys):
    assert main(["explain", "/scheduler"]) == 0
    assert "301 redirect to /scheduler/" in capsys.readouterr().out


def test_cli_explain_above_root_is_400(capsys):
    assert main(["explain", "/../etc/passwd"]) == 1
    assert "400" in capsys.readouterr().err


def test_cli_registry_option_either_side(tmp_path, capsys):
    path = tmp_path / "services.yaml"
    data = {"services": [{"name": "only", "description": "d", "container": "c", "ip": None, "port": 8030,
                          "public_path": "/only/", "upstream_path": "/v1/", "memory_limit": "32m",
                          "priority": 1, "compose_file": "/srv/only.yml"}]}
    path.write_text(yaml.safe_dump(data))
    assert main(["explain", "/only/x", "--registry", str(path)]) == 0
    assert "http://localhost:8030/v1/x" in capsys.readouterr().out
    assert main(["--registry", str(path), "list"]) == 0
    out = capsys.readouterr().out
    assert "/only/" in out and "scheduler" not in out


def test_cli_registry_error_exits_2(tmp_path, capsys):
    path = tmp_path / "services.yaml"
    data = copy.deepcopy({"services": [{"name": "bad", "description": "d", "container": "c", "ip": None,
                                        "port": 8030, "public_path": "/bad/", "upstream_path": "/v1",
                                        "memory_limit": "32m", "priority": 1, "compose_file": "/srv/b.yml"}]})
    path.write_text(yaml.safe_dump(data))
    assert main(["--registry", str(path), "list"]) == 2
    err = capsys.readouterr().err
    assert "services[bad].upstream_path:" in err and "/bad/foo upstream as /v1foo" in err


def test_cli_honours_watchme_registry_like_the_deploy(tmp_path, capsys, monkeypatch):
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(ONLY))
    monkeypatch.setenv("WATCHME_REGISTRY", str(path))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "/only/" in out and "scheduler" not in out
    assert main(["explain", "/only/x"]) == 0
    assert "http://localhost:8030/v1/x" in capsys.readouterr().out
    # --registry still wins over the variable.
    assert main(["--registry", str(ROOT / "group_data" / "services.yaml"), "list"]) == 0
    assert "scheduler" in capsys.readouterr().out


def test_watchme_routes_and_explain_through_the_command(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(ONLY))
    watchme = str(Path(sys.executable).with_name("watchme"))
    env = {**os.environ, "WATCHME_REGISTRY": str(path)}
    run = subprocess.run([watchme, "explain", "/only/x"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0 and "http://localhost:8030/v1/x" in run.stdout, run.stderr
    run = subprocess.run([watchme, "routes"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "/only/" in run.stdout and "scheduler" not in run.stdout


def test_watchme_command_table(capsys, monkeypatch):
    from watchme import __main__ as cli

    assert cli.main(["--help"]) == 0
    usage = capsys.readouterr().out
    for cmd in cli.COMMANDS:
        assert f"watchme {cmd}" in usage
    assert cli.main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
    # A command whose module is not in this checkout says so, instead of a traceback.
    monkeypatch.setitem(cli.COMMANDS, "later", ("watchme.not_written_yet", []))
    assert cli.main(["later"]) == 2
    assert "watchme/not_written_yet.py is missing" in capsys.readouterr().err
    for cmd in ("unlock", "import", "docs", "rollout"):
        assert cli.COMMANDS[cmd][0] in ("watchme.unlock", "watchme.importer", "watchme.docs", "watchme.rollout")
