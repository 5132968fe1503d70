"""Nginx: one site rendered from the registry, linked into /etc/nginx, applied safely.

Replaces the seed's hand procedure (sections 1-3, "緊急時の手動復旧手順"): backup, edit,
`nginx -t`, reload — now with probes before and after, and a restore when anything fails.
"""

from pyinfra import host
from pyinfra.operations import files

from watchme import nginx


def apply() -> None:
    d = host.data
    site_dir = f"{d.config_root}/nginx"
    live = f"{site_dir}/{d.server_name}"
    backups = f"{site_dir}/backups"
    script = f"{d.config_root}/scripts/nginx-safe-apply"
    links = [f"/etc/nginx/sites-available/{d.server_name}", f"/etc/nginx/sites-enabled/{d.server_name}"]
    services = d.registry.enabled_services

    files.directory(name=f"Nginx site directory {site_dir}", path=site_dir)
    files.directory(name=f"Scripts directory {d.config_root}/scripts", path=f"{d.config_root}/scripts")
    files.put(name="Install nginx-safe-apply", src="files/nginx-safe-apply.sh", dest=script,
              mode="755")
    # An empty site is valid Nginx: the links never dangle, even on a brand-new server.
    files.file(name=f"Site file {live}", path=live)
    for path in links:
        nginx.link(name=f"Link nginx site {path}", path=path, target=live, backup_dir=backups,
                   all_paths=links)
    nginx.site(
        name=f"Apply nginx site {d.server_name} (nginx -t, reload, probe)",
        live=live,
        content=nginx.render_site(d.server_name, services, backups),
        script=script, backup_dir=backups, keep=d.nginx_backups_keep, vhost=d.server_name,
        routes=[f"{s.name}|{s.probe_url_path}|{s.probe.expect}" for s in services],
    )
