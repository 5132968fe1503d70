"""The host guards itself: network check + disk guard on a systemd timer (seed: "インフラ管理コマンド",
"自動監視設定").

Installs the host scripts (files/: docker_api.py, network_monitor.py, network_repair.py,
disk_guard.py, deploy_lock.py, pull_check.py (run by `watchme doctor`),
check-infrastructure.sh) into {config_root}/scripts (the
seed's commands still work there), renders the expected members from the registry and the
guard's settings from group_data into {config_root}/monitor, and runs them every
guard_interval from watchme-guard.timer instead of the seed's crontab line, which the same
run removes (after a backup) before it starts the timer: never both. The journal keeps
every run, a failing check shows in `systemctl --failed`, runs never overlap, and the guard
does nothing while a deploy holds the lock. At the end of every deploy the network check
runs once with --fix (watchme/network_check.py says when that counts as a change).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pyinfra import host, inventory, logger
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import systemd

from watchme import bundle
from watchme.adopt import adopt_links
from watchme.cron import remove_guard_cron_lines
from watchme.network_check import network_check
from watchme.placement import services_here
from watchme.units import loaded as units_loaded
from watchme.units import GUARD_UNITS, units_enabled

ROOT = Path(__file__).resolve().parent.parent

SYSTEM_DIR = "/etc/systemd/system"
UNITS = GUARD_UNITS
SCRIPTS = ("docker_api.py", "network_monitor.py", "network_repair.py", "disk_guard.py",
           "deploy_lock.py", "pull_check.py", "check-infrastructure.sh")
# The guard reconnects one container at most once per hour; more is a flap (issue 12 §4).
FLAP_WINDOW = 3600
# systemd time spans as the timer accepts them, e.g. 5min, 90s, 1h 30min.
TIME_SPAN = re.compile(r"\d+\s*(us|ms|s|sec|m|min|h|hr|d|w)(\s*\d+\s*(us|ms|s|sec|m|min|h|hr|d|w))*")


def check_data() -> None:
    """Refuse bad settings before any change, naming the key and the fix."""
    d = host.data
    for key in ("monitor_fix", "prune_all_images", "prune_volumes"):
        if not isinstance(d.get(key), bool):
            raise DeployError(f"{host.name}: {key}: {d.get(key)!r} is not true or false; "
                              f"fix: set {key} to True or False in group_data")
    t = d.get("disk_prune_threshold")
    if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= 100:
        raise DeployError(f"{host.name}: disk_prune_threshold: {t!r} is not a percentage; "
                          "fix: an integer from 1 to 100 (default 85)")
    interval = d.get("guard_interval")
    if not isinstance(interval, str) or not TIME_SPAN.fullmatch(interval.strip()):
        raise DeployError(f"{host.name}: guard_interval: {interval!r} is not a systemd time "
                          "span; fix: e.g. \"5min\" or \"90s\"")


def paths() -> tuple[str, str]:
    """(scripts dir, guard config dir) under config_root."""
    root = host.data.config_root
    return f"{root}/scripts", f"{root}/monitor"


def members() -> dict:
    """What the checks expect: every enabled service, its fixed IP (null: membership only)
    and its memory limit in bytes (compared with the container's HostConfig.Memory)."""
    d = host.data
    return {
        "network": {"name": d.network_name, "subnet": d.network_subnet,
                    "gateway": d.network_gateway},
        "members": [{"service": s.name, "container": s.container,
                     "ip": str(s.ip) if s.ip is not None else None,
                     "memory_limit": s.memory_mib * 1024 * 1024}
                    for s in services_here(host, inventory)],
    }


def install_scripts() -> None:
    """The host scripts, before anything runs them (the network task calls this first): they
    are in the bundle (watchme/bundle.py), installed before the network operation runs."""
    scripts, _ = paths()
    bundle.directory(scripts, mode="755", user="root", group="root")
    for script in SCRIPTS:
        bundle.add(f"{scripts}/{script}", (ROOT / "files" / script).read_bytes(), mode="755")


def render() -> None:
    """Register the scripts, members, settings and guard units in the bundle."""
    check_data()
    d = host.data
    scripts, conf = paths()
    install_scripts()
    bundle.directory(conf, mode="755", user="root", group="root")
    bundle.add(f"{conf}/members.json", json.dumps(members(), indent=2) + "\n")
    bundle.add(f"{conf}/guard.env", bundle.render(
        "templates/guard.env.j2", monitor_fix=d.monitor_fix,
        disk_prune_threshold=d.disk_prune_threshold, prune_all_images=d.prune_all_images,
        prune_volumes=d.prune_volumes, flap_window=FLAP_WINDOW))
    for unit in UNITS:
        bundle.add(f"{conf}/{unit}", bundle.render(
            f"templates/{unit}.j2", scripts_dir=scripts, monitor_fix=d.monitor_fix,
            guard_interval=d.guard_interval.strip()))


def apply() -> None:
    d = host.data
    _, conf = paths()
    rewritten = [u for u in UNITS if bundle.changed(f"{conf}/{u}")]
    # The seed's layout: the unit lives in the config root, /etc/systemd/system links it.
    links = adopt_links(name=f"Link the guard units into {SYSTEM_DIR}",
                        links={f"{SYSTEM_DIR}/{u}": f"{conf}/{u}" for u in UNITS})
    # A run killed between writing a guard unit and daemon-reload leaves the file up to date
    # and systemd running the old one (NeedDaemonReload): this run finishes the job.
    loaded = units_loaded(list(UNITS))
    never_loaded = [u for u in UNITS if loaded.get(u, {}).get("need_reload")]
    if never_loaded:
        logger.warning(f"{host.print_prefix}systemd has not loaded the file of "
                       f"{', '.join(never_loaded)} (an interrupted run): reloading")
        systemd.daemon_reload(name="Reload systemd (a guard unit file was never loaded)")
    else:
        systemd.daemon_reload(name="Reload systemd (a guard unit changed)",
                              _if=lambda: bool(rewritten) or links.did_change())
    # The seed's */5 crontab line goes before the timer starts: never both guards at once.
    remove_guard_cron_lines(name="Remove the seed's guard crontab lines (backup first)",
                            backup_dir=f"{d.config_root}/backups")
    timer = "watchme-guard.timer"
    units_enabled(name=f"Enable and start {timer}", enable=[timer], start=[timer],
                  restart=[timer] if timer in rewritten or timer in never_loaded else [])


def check_now() -> None:
    """The deploy's last step: the network check once, with --fix (unless monitor_fix is
    off, when a detached running container fails the deploy instead), its report printed."""
    d = host.data
    scripts, conf = paths()
    network_check(name=f"Network monitor{' --fix' if d.monitor_fix else ''} "
                       f"({d.network_name} members)",
                  script=f"{scripts}/network_monitor.py",
                  members=f"{conf}/members.json", fix=d.monitor_fix)
