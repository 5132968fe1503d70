"""First-time bootstrap: Nginx, Docker, compose, certbot, the docker group, swap, the config root.

Replaces the seed's `setup_server.sh` first run ("サーバーへの初回セットアップ手順").
Safe to run on every deploy: each step checks the host first and changes nothing twice.
What is already installed, in whatever form, is kept (watchme/packages.py); whatever is
missing is installed in one apt run.
"""

from pyinfra import host, inventory, logger
from pyinfra.api import QuoteString, StringCommand, operation
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import apt, server

from watchme import bundle, host_profile, packages
from watchme.swap import swapfile
from watchme.placement import services_here
from watchme.units import GUARD_UNITS, unit_name, units_enabled


def preflight() -> dict:
    """Refuse unsupported hosts before any change: distro and sudo are checked first.

    Returns the host profile (one round trip, read once per deploy) for apply().
    """
    profile = host_profile.read(host.data.swap_file)
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


def software(profile: dict) -> None:
    """Install what is missing in every form, in one apt run; record what later tasks use."""
    d = host.data
    try:
        sw = packages.detect(profile, d.bootstrap_packages)
        names = sw.apt_names(d.compose_candidates)
        apt_state = (host.get_fact(packages.AptCandidates, names=names) if names
                     else {"candidates": {}, "refreshed": False})
        plan = packages.plan(sw, d.compose_candidates, apt_state["candidates"])
    except packages.PackageError as e:
        raise DeployError(f"{host.name}: {e}") from None
    for warning in plan.warnings:
        logger.warning(f"{host.print_prefix}{warning}")
    logger.info(f"{host.print_prefix}{packages.summary(sw, plan)}")
    # What later tasks read (README "Host facts the bootstrap records").
    d.compose_command = plan.compose_command
    d.nginx_layout = sw.nginx_layout
    d.docker_unit = sw.docker_unit
    d.certbot_command = sw.certbot or packages.CERTBOT_CLI
    d.certbot_timer = sw.certbot_timer
    d.ecr_credential_helper = plan.ecr_helper
    # Every unit the deploy asks systemd about, read as one fact (watchme/units.py loaded()).
    d.systemd_units = sorted({u for u in (sw.docker_unit, sw.nginx_unit, sw.certbot_timer,
                                          d.infra_unit, *GUARD_UNITS,
                                          *(unit_name(s) for s in services_here(host, inventory)))
                              if u})

    if plan.install:
        # The lists are refreshed only when something is installed: a no-op deploy stays no-op.
        apt.packages(name=f"Install {', '.join(plan.install)}", packages=plan.install,
                     no_recommends=True, update=not apt_state["refreshed"])
    for unit, what in ((sw.docker_unit, "the Docker engine"), (sw.nginx_unit, "nginx")):
        if unit:
            # One operation each: a failure names the engine or nginx (the deploy's record).
            units_enabled(name=f"Enable and start {unit.removesuffix('.service')}",
                          enable=[unit], start=[unit])
        else:
            logger.warning(f"{host.print_prefix}no systemd unit runs {what}: not managed")
    # The profile already lists the login user's groups; pyinfra's Users fact would cost a
    # ~200 ms scan of every account on each no-op deploy.
    if "docker" not in profile["groups"]:
        if not profile["docker_group"] and sw.engine:
            # An engine installed without the group (a snap): the docker.io package makes it.
            server.group(name="The docker group", group="docker", system=True)
        join_group(name=f"Add {profile['user']} to the docker group", user=profile["user"],
                   group="docker", groups=profile["groups"])


@operation()
def join_group(user: str, group: str, groups: list[str]):
    """`user` in `group` (supplementary, the others kept).

    Own operation, not server.user: that reads the Users, Groups, Os and Which facts (four
    sessions, one a scan of every account) to add one group; the host profile, read in the
    lock's round trip, already lists the user's groups (`groups`).
    """
    if group in groups:
        host.noop(f"{user} is in {group}")
        return
    yield StringCommand("usermod", "-aG", QuoteString(group), QuoteString(user))


def apply(profile: dict) -> None:
    software(profile)
    swapfile(name=f"Swap file {host.data.swap_file} ({host.data.swap_size_mib} MiB)",
             path=host.data.swap_file, size_mib=host.data.swap_size_mib)
    # Created by the one bundle upload (watchme/bundle.py), before any file under it.
    bundle.directory(host.data.config_root, user=host.data.config_root_owner,
                     group=host.data.config_root_group, mode=host.data.config_root_mode)
