"""Defaults for every host. Override per group (group_data/production.py) or per host.

Each key has a one-line comment; README.md ("Settings") lists them too.
"""

# Run every operation through sudo: the deploy user on EC2 is `ubuntu`, not root.
_sudo = True

# Where the deploy renders every file it owns; /etc links point here (the seed's layout).
config_root = "/home/ubuntu/watchme-server-configs"
# Owner, group and mode of config_root: root-owned, since systemd and nginx read from it.
config_root_owner = "root"
config_root_group = "root"
config_root_mode = "755"

# Packages the bootstrap installs (Debian and Ubuntu names); compose is detected separately.
bootstrap_packages = ["nginx", "docker.io", "curl"]
# Compose packages in order of preference: the v2 plugin first, docker-compose (v1) last.
compose_candidates = ["docker-compose-v2", "docker-compose-plugin", "docker-compose"]
# Distributions the bootstrap knows (os-release ID or ID_LIKE).
supported_distros = ["debian", "ubuntu"]

# Swap file path and size; the seed's t4g.small runs with 2 GB of swap.
swap_file = "/swapfile"
swap_size_mib = 2048

# The service registry, the one source of truth (group_data/services.yaml, or the file in
# WATCHME_REGISTRY). Loading validates it, so a bad entry stops the run before any SSH.
import os as _os  # noqa: E402
import sys as _sys  # noqa: E402

from watchme.registry import RegistryError as _RegistryError, load as _load  # noqa: E402

try:
    registry = _load(_os.environ.get("WATCHME_REGISTRY") or None)
except _RegistryError as _e:
    _sys.exit(f"registry: {_e}")
# Public name nginx answers to (server_name); the seed's site is api.hey-watch.me.
server_name = "api.hey-watch.me"
