"""Defaults for every host. Override per group (group_data/production.py, testhost.py), per
host, or per run (--data key=value).

Each key has a one-line comment; watchme/settings.py types and bounds it, README.md
("Settings") lists it. The end of this file validates them before pyinfra connects.
"""

# Run every operation through sudo: the deploy user on EC2 is `ubuntu`, not root.
_sudo = True

# Where the deploy renders every file it owns; /etc links point here. Never the operator's
# git clone (/home/ubuntu/watchme-server-configs): the deploy does not write there.
config_root = "/opt/watchme"
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

# Public name nginx answers to (server_name); the seed's site is api.hey-watch.me.
server_name = "api.hey-watch.me"
# How many timestamped backups of the Nginx site to keep (the seed kept them forever).
nginx_backups_keep = 10
# Serve the site on port 80 only, without TLS (no certificate needed); production serves HTTPS.
http_only = False
# Certificate chain nginx serves on 443 (certbot's path for the seed's site).
tls_certificate = "/etc/letsencrypt/live/api.hey-watch.me/fullchain.pem"
# Private key of tls_certificate.
tls_certificate_key = "/etc/letsencrypt/live/api.hey-watch.me/privkey.pem"
# Make a self-signed certificate when none exists (test hosts only; production has certbot's).
tls_self_signed = False
# Let a deploy remove live locations the registry does not list (default: stop and list them).
allow_route_removal = False
# Let a deploy from a commit older than the last deployed one run (default: stop and warn).
allow_older = False
# Seconds to wait for another deploy's lock before failing (CI waits; 0: fail at once).
lock_wait_seconds = 0

# The shared network every service joins (seed: "ネットワークインフラストラクチャ管理").
network_name = "watchme-network"
# Its driver: a single-host bridge (overlay: Docker Swarm across hosts, see network_scope).
network_driver = "bridge"
# single: a bridge on one host; swarm: an attachable overlay (automatic with several hosts).
network_scope = "single"
# Docker's dynamic addresses (a container without a fixed IP, a rollout candidate, overlay anchors)
# come from here, never a registry IP; None: the subnet's last /24 (172.27.255.0/24). A network
# made without it is reported; network_repair adds it.
network_ip_range = None
# Overlay only: IPsec-encrypt the data plane (README "Several hosts" says why it is off).
network_encrypted = False
# This host's private address for Swarm, Nginx upstreams and the firewall (None: read from the host).
private_address = None
# Its subnet; the registry's fixed container IPs are inside it.
network_subnet = "172.27.0.0/16"
# Its gateway (never a container's IP).
network_gateway = "172.27.0.1"
# Recreate a drifted watchme-network, reconnecting its containers with their IPs and aliases.
network_repair = False
# Rewrite compose files that create watchme-network to join it with external: true (backup first).
compose_migrate = False
# Pull images (compose pull, failures ignored) before each service starts (test hosts: off).
compose_pull = True
# The ECR registry the services' images come from (seed: docker login before compose pull).
ecr_registry = "754724220380.dkr.ecr.ap-southeast-2.amazonaws.com"
# The AWS region of ecr_registry.
ecr_region = "ap-southeast-2"
# The unit that owns watchme-network; every service unit requires it.
infra_unit = "watchme-infrastructure.service"
# Usable memory of the host in MiB for the registry's own check, before SSH (t4g.small: ~1.8 GiB).
host_memory_mib = 1900
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

# Checked here, before pyinfra connects: the values above with this run's --data overrides
# (pyinfra applies them after group_data is read). The deploy checks each host's effective
# values again first thing (watchme.settings.require), group files and host data included.
import sys as _sys  # noqa: E402

from watchme import settings as _settings  # noqa: E402
from watchme.registry import load as _load  # noqa: E402

try:
    # The service registry, the one source of truth (WATCHME_REGISTRY, else
    # group_data/services.yaml); a bad entry stops the run before any SSH.
    registry = _load(None, _settings.validate({
        **{k: v for k, v in globals().items() if k in _settings.keys()},
        **_settings.cli_data(_sys.argv)}))
except _settings.ConfigError as _e:
    _sys.exit(f"{'settings' if isinstance(_e, _settings.SettingsError) else 'registry'}: {_e}")
