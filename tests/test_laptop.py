"""The laptop path (issue 15): `make venv` needs Python 3.10+ only; deploy-local stays local.

`make venv` runs in a copy of the repository with a PATH of symlinks to the few tools it
needs: apt-get, dpkg, dpkg-query, docker and sudo are absent, as on a Mac.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_idempotent

pytestmark = pytest.mark.provisioned  # e2e hosts: packages preinstalled (tests/provisioned.py)

ABSENT = ("apt-get", "dpkg", "dpkg-query", "docker", "sudo")
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _copy_repo(dest: Path) -> Path:
    ignore = shutil.ignore_patterns(".venv", ".git", ".testhost", "*.egg-info", "__pycache__",
                                    ".pytest_cache")
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def _bin_with(tmp: Path, tools: dict[str, str]) -> str:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, target in tools.items():
        (bin_dir / name).symlink_to(target)
    return str(bin_dir)


def test_make_venv_needs_no_apt_docker_or_root(tmp_path):
    repo = _copy_repo(tmp_path / "repo")
    path = _bin_with(tmp_path, {"make": shutil.which("make"), "python3": BASE_PYTHON,
                                "touch": shutil.which("touch")})
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHME_")}
    env["PATH"] = path
    for tool in ABSENT:
        assert shutil.which(tool, path=path) is None
    p = subprocess.run(["make", "venv"], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "apt-get" not in p.stdout + p.stderr
    watchme = repo / ".venv" / "bin" / "watchme"
    out = subprocess.run([str(watchme), "--help"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "watchme deploy" in out.stdout
    pyinfra = subprocess.run([str(repo / ".venv" / "bin" / "pyinfra"), "--version"],
                             env=env, capture_output=True, text=True)
    assert "3.10.0" in pyinfra.stdout + pyinfra.stderr  # the pinned pyinfra
    # The test tools are not part of the laptop install.
    assert not (repo / ".venv" / "bin" / "pytest").exists()
    # Without apt, the Debian-only targets say what they need instead of calling apt-get.
    p = subprocess.run(["make", "deps"], cwd=repo, env=env, capture_output=True, text=True)
    assert p.returncode != 0
    assert "make deploy-local / make test need: docker debootstrap" in p.stdout
    assert "install them yourself" in p.stdout


def test_make_venv_names_the_python_it_needs(tmp_path):
    old = tmp_path / "python-old"
    old.write_text("#!/bin/sh\n"
                   f"exec {BASE_PYTHON} -c 'import sys; sys.version_info = (3, 9); "
                   "exec(sys.argv[1])' \"$2\"\n")
    old.chmod(0o755)
    p = subprocess.run(["make", "-C", str(ROOT), "venv", f"PYTHON={old}",
                        f"VENV={tmp_path / 'venv'}"], capture_output=True, text=True)
    assert p.returncode != 0
    assert "make venv needs Python 3.10+" in p.stderr and "fix: make venv PYTHON=" in p.stderr


@pytest.fixture
def fake_venv(tmp_path):
    """A venv whose python and watchme record how deploy-local calls them."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls"
    for name in ("python", "watchme"):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{{ echo \"{name} $*\"; env | grep '^WATCHME_' | sort; "
                          f"echo --; }} >> {log}\n")
        script.chmod(0o755)
    return tmp_path / "venv", log


def test_deploy_local_ignores_watchme_hosts(fake_venv):
    """Whatever WATCHME_* the caller has, deploy-local deploys to the local test host only."""
    venv, log = fake_venv
    env = {**os.environ, "WATCHME_HOSTS": "ubuntu@127.0.0.1:1", "WATCHME_SSH_KEY": "/nope",
           "WATCHME_TESTHOST": "/elsewhere.json", "WATCHME_REGISTRY": "/other.yaml"}
    p = subprocess.run(["make", "-C", str(ROOT), "-o", "image", "deploy-local",
                        f"VENV={venv}"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    calls = log.read_text().split("--\n")
    deploy = next(c for c in calls if c.startswith("watchme deploy"))
    first, *env_lines = deploy.strip().splitlines()
    assert first == "watchme deploy -y --limit testhost"
    assert env_lines == [f"WATCHME_TESTHOST={ROOT}/.testhost/current.json"]
    # And the command line itself names no other target.
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "-o", "image", "deploy-local",
                          "WATCHME_HOSTS=ubuntu@127.0.0.1:1"], env=env, capture_output=True,
                         text=True)
    assert "-u WATCHME_HOSTS" in dry.stdout and "127.0.0.1:1" not in dry.stdout


# -- SSH as laptops have it, against a real test host ---------------------------------------

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


def _keygen(path: Path, *args: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-C", "laptop", "-f", str(path), *args],
                   check=True)
    return path


@pytest.fixture(scope="module")
def laptop(testhost, tmp_path_factory):
    """An operator's ~/.ssh: an ed25519 and an RSA PEM key, a hashed known_hosts, an alias."""
    d = tmp_path_factory.mktemp("dot-ssh")
    ed = _keygen(d / "watchme-ed25519.pem", "-t", "ed25519")
    rsa = _keygen(d / "watchme-key.pem", "-t", "rsa", "-b", "2048", "-m", "PEM")
    assert rsa.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")  # EC2's .pem form
    pubs = "".join(Path(f"{k}.pub").read_text() for k in (ed, rsa))
    subprocess.run(["docker", "exec", "-i", testhost.name, "sh", "-c",
                    "cat >> /home/ubuntu/.ssh/authorized_keys"], input=pubs, text=True, check=True)
    known = d / "known_hosts"
    shutil.copy(testhost.known_hosts, known)
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    text = known.read_text()
    assert text.startswith("|1|") and "127.0.0.1" not in text  # hashed, as Debian/macOS write
    config = d / "config"
    config.write_text(f"Host watchme-prod\n  HostName 127.0.0.1\n  Port {testhost.port}\n"
                      f"  User ubuntu\n  IdentityFile {ed}\n")
    return {"ed25519": ed, "rsa": rsa, "known": known, "config": config}


def _who(testhost, mark: str) -> str:
    """The login user that wrote /tmp/<mark> on the host (the deploy's commands run via sudo)."""
    p = subprocess.run(["docker", "exec", testhost.name, "cat", f"/tmp/{mark}"],
                       capture_output=True, text=True)
    return p.stdout.strip()


def _exec(env: dict, *command: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("WATCHME_")}
    full.update(env)
    return subprocess.run([PYINFRA, "-y", "inventory.py", "exec", "--", *command], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=300)


def test_alias_from_ssh_config_with_hashed_known_hosts(laptop, testhost):
    run = _exec({"WATCHME_HOSTS": "watchme-prod", "WATCHME_SSH_CONFIG": str(laptop["config"]),
                 "WATCHME_KNOWN_HOSTS": str(laptop["known"]), "WATCHME_SSH_USER": "nobody"},
                "sh", "-c", "'echo $SUDO_USER > /tmp/alias'")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "[watchme-prod] Connected" in run.stderr
    assert _who(testhost, "alias") == "ubuntu"  # the alias's User, not WATCHME_SSH_USER


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_pem_keys(laptop, testhost, kind):
    run = _exec({"WATCHME_HOSTS": f"prod=ubuntu@127.0.0.1:{testhost.port}",
                 "WATCHME_SSH_KEY": str(laptop[kind]), "WATCHME_KNOWN_HOSTS": str(laptop["known"])},
                "sh", "-c", f"'echo $SUDO_USER > /tmp/key-{kind}'")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "[prod] Connected" in run.stderr and _who(testhost, f"key-{kind}") == "ubuntu"


def test_hashed_known_hosts_still_refuse_an_unknown_host(laptop, testhost, tmp_path):
    other = tmp_path / "known_hosts"
    line = Path(testhost.known_hosts).read_text().splitlines()[0]
    other.write_text(line.replace(f"]:{testhost.port} ", "]:1 ") + "\n")  # another port's key
    subprocess.run(["ssh-keygen", "-H", "-f", str(other)], check=True, capture_output=True)
    run = _exec({"WATCHME_HOSTS": f"ubuntu@127.0.0.1:{testhost.port}",
                 "WATCHME_SSH_KEY": str(laptop["rsa"]), "WATCHME_KNOWN_HOSTS": str(other)}, "true")
    assert run.returncode != 0
    assert "No host key" in run.stdout + run.stderr


def test_deploy_through_the_alias_then_nothing_changes(laptop, deploy):
    env = {"WATCHME_HOSTS": "watchme-prod", "WATCHME_SSH_CONFIG": str(laptop["config"]),
           "WATCHME_KNOWN_HOSTS": str(laptop["known"])}
    # An alias makes the test host a `production` host: give it what the testhost group
    # sets (no certbot certificate here, no image registry to pull from).
    data = ("--data", "tls_self_signed=true", "--data", "compose_pull=false")
    first = deploy(*data, env=env)
    assert first.rc == 0, first.stderr[-3000:]
    assert_idempotent(lambda **kw: deploy(*data, **kw), env=env)
