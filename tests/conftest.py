"""Shared fixtures: a fresh real test host per end-to-end module, and the deploy runner.

A module that uses `testhost` (directly or through `deploy` / `host`) gets its own systemd
container, started from the cached image and removed when the module ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra
from gevent import monkey

# pyinfra_cli patches the whole process for gevent when imported (monkey.patch_all()). The
# tests never connect in process (deploys and CLIs run as subprocesses, which still patch),
# and a patched threading deadlocks pytest-xdist's worker loop (LoopExit): leave it unpatched.
monkey.patch_all = lambda *args, **kwargs: None

from watchme import testhost as th

ROOT = Path(__file__).resolve().parent.parent
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
WATCHME = str(Path(sys.executable).with_name("watchme"))


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout)

    @property
    def totals(self) -> dict:
        return self.json["results"]["totals"]

    def changed(self) -> list[str]:
        """Names of the operations that changed something."""
        return [op["name"] for op in self.json["results"]["operations"] if op["success"]]

    @property
    def last_line(self) -> str:
        lines = [l for l in self.stderr.strip().splitlines() if l.strip()]
        return lines[-1] if lines else ""


def run_deploy(env: dict[str, str], *args: str, tool: str = PYINFRA, yes: bool = True) -> Run:
    """Run the deploy; yes=False (with --dry) makes pyinfra detect and print changes."""
    if tool == PYINFRA:
        cmd = [PYINFRA, *(["-y"] if yes else []), *args, "inventory.py", "deploy.py"]
    else:
        cmd = [tool, "deploy", "-y", *args]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHME_")}
    full_env.update(env)
    p = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=900)
    return Run(p.returncode, p.stdout, p.stderr)


def pytest_collection_modifyitems(items):
    """Every test on a real test host is e2e, so `-m "not e2e"` is exactly the unit suite."""
    for item in items:
        if "testhost" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def testhost(request):
    """A fresh host for the module: bare, or with the deploy's packages preinstalled when the
    module is marked `provisioned` (tests/provisioned.py)."""
    image = None
    if request.node.get_closest_marker("provisioned"):
        from tests import provisioned
        image = provisioned.image()
    host = th.start(image=image)
    yield host
    th.stop(host.name)


@pytest.fixture(scope="module")
def testhost_env(testhost) -> dict[str, str]:
    return {"WATCHME_TESTHOST": str(Path(testhost.key).parent / "host.json")}


@pytest.fixture(scope="module")
def deploy(testhost_env):
    """deploy(*pyinfra_args, env=...) -> Run, always with --json and -y."""

    def _deploy(*args: str, env: dict[str, str] | None = None) -> Run:
        return run_deploy({**testhost_env, **(env or {})}, "--json", *args)

    return _deploy


@pytest.fixture(scope="module")
def host(testhost):
    """testinfra over real SSH (OpenSSH, strict host key checking), with sudo."""
    return testinfra.get_host(f"ssh://{testhost.name}", ssh_config=testhost.ssh_config, sudo=True)


def assert_idempotent(deploy, **kw) -> None:
    """The gate every end-to-end module ends with: a second run changes nothing."""
    again = deploy(**kw)
    assert again.rc == 0, again.stderr[-2000:]
    assert again.totals["error"] == 0
    assert again.changed() == [], f"second run changed: {again.changed()}"
    assert again.totals["success"] == 0
