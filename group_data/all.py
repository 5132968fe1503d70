"""Defaults for every host. Override per group (group_data/production.py) or per host.

Each key has a one-line comment; README.md ("Settings") lists them.
"""

# Run every operation through sudo: the deploy user on EC2 is `ubuntu`, not root.
_sudo = True

# Where the deploy renders every file it owns; /etc links point here (the seed's layout).
config_root = "/home/ubuntu/watchme-server-configs"
# Owner of config_root: root, since systemd and nginx read units and sites from it.
config_root_owner = "root"
# Group of config_root.
config_root_group = "root"
# Mode of config_root: world-readable, writable by root only.
config_root_mode = "755"

# Packages the bootstrap installs (Debian and Ubuntu names); compose is detected separately.
bootstrap_packages = ["nginx", "docker.io", "curl"]
# Compose packages in order of preference: the v2 plugin first, docker-compose (v1) last.
compose_candidates = ["docker-compose-v2", "docker-compose-plugin", "docker-compose"]
# Distributions the bootstrap knows (os-release ID or ID_LIKE).
supported_distros = ["debian", "ubuntu"]

# Swap file path, created unless swap is already active.
swap_file = "/swapfile"
# Swap file size in MiB; the seed's t4g.small runs with 2 GB of swap.
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
# How many timestamped backups of the Nginx site to keep (the seed kept them forever).
nginx_backups_keep = 10

# The shared network every service joins (seed: "ネットワークインフラストラクチャ管理").
network_name = "watchme-network"
# Its driver: a single-host bridge.
network_driver = "bridge"
# Its subnet; the registry's fixed container IPs are inside it.
network_subnet = "172.27.0.0/16"
# Its gateway (never a container's IP).
network_gateway = "172.27.0.1"
# Recreate a drifted watchme-network, reconnecting its containers with their IPs and aliases.
network_repair = False
# Rewrite compose files that create watchme-network to join it with external: true (backup first).
compose_migrate = False
# Pull images (compose pull, failures ignored) before each service starts; off: no registry login here.
compose_pull = False
# The unit that owns watchme-network; every service unit requires it.
infra_unit = "watchme-infrastructure.service"
# MiB kept free for the OS, Docker and Nginx in the memory budget (seed: ~300 MB).
memory_os_reserve_mib = 300
# Share of the host's memory above which the budget only warns (over 100 % stops the deploy).
memory_warn_share = 0.8

# The guard (watchme-guard.timer, check-infrastructure.sh): how often it runs (a systemd time span).
guard_interval = "5min"
# Let the guard and the deploy reconnect detached containers with their fixed IPs (--fix).
monitor_fix = True
# Prune Docker when the filesystem holding its data root is at least this % full (1-100).
disk_prune_threshold = 85
# Prune all unused images, not only dangling ones (the seed's `prune -a`); they must be pulled again.
prune_all_images = False
# Also prune unused volumes. Deletes data (a stopped service's database); README explains. Keep False.
prune_volumes = False
