"""Nginx: one site rendered from the registry, linked into /etc/nginx, applied safely.

Replaces the seed's hand procedure (sections 1-3, "緊急時の手動復旧手順"): backup, edit,
`nginx -t`, reload — now tested on a staged copy first, with probes before and after, and
the last known-good site restored when anything fails. A live location the registry does
not have stops the deploy before any change unless allow_route_removal is set.
"""

from pathlib import Path

from pyinfra import host, inventory, logger, state
from pyinfra.api.exceptions import DeployError

from tasks import tls as tls_task
from watchme import bundle, live_routes, nginx, placement
from watchme.adopt import adopt_links

ROOT = Path(__file__).resolve().parent.parent


def render() -> None:
    """Register the site directory and the safe-apply script in the bundle (watchme/bundle.py);
    the site itself goes through the safe cycle, never the bundle."""
    if not placement.is_front(host):
        return
    root = host.data.config_root
    bundle.directory(f"{root}/nginx")
    bundle.directory(f"{root}/scripts", mode="755", user="root", group="root")
    bundle.add(f"{root}/scripts/nginx-safe-apply", (ROOT / "files" / "nginx-safe-apply.sh").read_bytes(),
               mode="755")


def apply() -> None:
    if not placement.is_front(host):
        return  # only the front host serves the public site (issue 14)
    d = host.data
    # A service on an unreachable host: its route's target is unknown, so the live site is
    # kept exactly as it is (no route dropped or changed) until that host answers again.
    away = [h for h in placement.hosts(inventory) if h in state.failed_hosts
            and placement.placement_name(h) in placement.elsewhere(d.registry, inventory)]
    if away:
        names = ", ".join(placement.placement_name(h) for h in away)
        logger.warning(f"{host.print_prefix}nginx: {names} unreachable: the site is left as it is "
                       f"(its routes keep their targets); rerun when {names} answers")
        return
    paths = nginx.site_paths(d)
    live, backups, state_dir, script = paths["live"], paths["backups"], paths["state_dir"], paths["script"]
    if d.get("nginx_layout", "sites") == "conf.d":
        # nginx.org's package has no sites-enabled/: its nginx.conf includes conf.d/*.conf.
        links = [f"/etc/nginx/conf.d/{d.server_name}.conf"]
    else:
        links = [f"/etc/nginx/sites-available/{d.server_name}",
                 f"/etc/nginx/sites-enabled/{d.server_name}"]
    # Services on other hosts are reached at their host's private address (watchme/placement.py).
    services = placement.routed(d.registry, inventory, placement.private_address)

    tls = tls_task.settings()
    if tls is not None:
        tls = {**tls, "http2": nginx.http2_style(host.get_fact(nginx.NginxVersion))}
    content = nginx.render_site(d.server_name, services, backups, tls,
                                d.registry.extra_locations)
    gone = live_routes.dropped(host.get_fact(live_routes.LiveNginxConfig), content, d.server_name)
    if gone and not d.get("allow_route_removal", False):
        raise DeployError(
            f"{host.name}: the live site serves location(s) the registry does not have: "
            f"{', '.join(gone)}. Nothing was changed. Add them to group_data/services.yaml "
            "(watchme import writes extra_locations for the ones that are no service), or deploy with --data allow_route_removal=true to drop them")

    # The operator's file (or link into their clone) is kept resolved, then replaced; an
    # empty site is valid Nginx, so the links never dangle, even on a brand-new server.
    adopt_links(name=f"Link nginx site {', '.join(links)}", links={p: live for p in links},
                backup_dir=backups, seed=live)
    nginx.site(
        name=f"Apply nginx site {d.server_name} (staged nginx -t, reload, probe)",
        live=live, content=content, script=script, backup_dir=backups,
        keep=d.nginx_backups_keep, state_dir=state_dir,
        probes=nginx.probes(d.server_name, services, tls is not None, d.registry.extra_locations),
    )
