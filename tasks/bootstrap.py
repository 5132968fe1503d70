"""First-time bootstrap: Nginx, Docker, compose, the docker group, swap, the config root.

Replaces the seed's `setup_server.sh` first run ("サーバーへの初回セットアップ手順").
Safe to run on every deploy: each step checks the host first and changes nothing twice.
"""

from pyinfra import host
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt, files, server, systemd

from watchme.facts import ComposeChoice, HostProfile
from watchme.operations import swapfile


def preflight() -> dict:
    """Refuse unsupported hosts before any change: distro and sudo are checked first."""
    profile = host.get_fact(HostProfile, swap_file=host.data.swap_file, _sudo=False)
    distro = {profile.get("id", "")} | set(profile["like"])
    if not distro & set(host.data.supported_distros):
        raise DeployError(
            f"{host.name}: unsupported distro {profile.get('pretty') or profile.get('id') or '?'}"
            f" (os-release ID {profile.get('id') or 'missing'}); this deploy supports "
            f"{', '.join(host.data.supported_distros)}")
    if profile["sudo"] == "no":
        raise DeployError(
            f"{host.name}: user {profile.get('user')} cannot sudo without a password; "
            "fix: give the deploy user passwordless sudo (as `ubuntu` has on EC2)")
    return profile


def packages(profile: dict) -> None:
    compose = host.get_fact(ComposeChoice, candidates=host.data.compose_candidates)
    if compose is None:
        raise DeployError(f"{host.name}: no compose package among "
                          f"{', '.join(host.data.compose_candidates)} in apt's lists")
    # Later tasks (the systemd units) run compose with this command.
    host.data.compose_command = compose["command"]
    wanted = [*host.data.bootstrap_packages, compose["package"]]
    installed = host.get_fact(DebPackages)
    if any(p not in installed for p in wanted):
        # Only refresh the lists when something must be installed: a no-op deploy stays no-op.
        apt.update(name="Refresh apt package lists")
    apt.packages(name=f"Install {', '.join(wanted)}", packages=wanted, no_recommends=True)
    for service in ("docker", "nginx"):
        systemd.service(name=f"Enable and start {service}", service=service,
                        running=True, enabled=True)
    # The profile already lists the login user's groups; pyinfra's Users fact would cost a
    # ~200 ms scan of every account on each no-op deploy.
    if "docker" not in profile["groups"]:
        server.user(name=f"Add {profile['user']} to the docker group", user=profile["user"],
                    groups=["docker"], append=True, ensure_home=False)


def apply() -> None:
    profile = preflight()
    packages(profile)
    swapfile(name=f"Swap file {host.data.swap_file} ({host.data.swap_size_mib} MiB)",
             path=host.data.swap_file, size_mib=host.data.swap_size_mib)
    files.directory(name=f"Config root {host.data.config_root}", path=host.data.config_root,
                    user=host.data.config_root_owner, group=host.data.config_root_group,
                    mode=host.data.config_root_mode)
