"""The host scripts (files/*.py) imported as the host runs them: files/ first on sys.path,
so `import docker_api` inside them finds the shared module."""

from __future__ import annotations

import sys
from pathlib import Path

FILES = str(Path(__file__).resolve().parent.parent / "files")
if FILES not in sys.path:
    sys.path.insert(0, FILES)

import deploy_lock  # noqa: E402
import disk_guard  # noqa: E402
import docker_api  # noqa: E402
import network_monitor  # noqa: E402
import network_repair  # noqa: E402

__all__ = ["deploy_lock", "disk_guard", "docker_api", "network_monitor", "network_repair"]
