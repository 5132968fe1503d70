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
