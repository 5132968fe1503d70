"""The Nginx site: rendering and the safe apply cycle (files/nginx-safe-apply.sh).

pyinfra's files.template writes in place, which is wrong for a site: the candidate must pass
`nginx -t` in a staged copy of the config tree before it becomes the live file, the reload
must succeed and the route probes pass before it counts as applied. So one operation of
ours, `site`, that hands the candidate to the cycle script; "up to date" is the sha256 the
script records on the host after a successful reload and probes, not the file on disk.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import re
import shlex
from pathlib import Path

from pyinfra import host, logger, state
from pyinfra.api import FactBase, FunctionCommand, operation
from pyinfra.api.util import get_template
from pyinfra.facts.files import FileContents

from watchme import kv, remote

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "templates" / "nginx-site.conf.j2"
ACME_PATH = "/.well-known/acme-challenge/"


ACME_ROOT = "/var/www/letsencrypt"  # certbot's webroot (tasks/tls.py), served by the site's :80


def site_paths(data) -> dict:
    """Where the deploy keeps the site and its safe cycle: tasks/nginx.py and a rollout's
    switch (watchme/rollout_site.py) use the same paths."""
    site_dir = f"{data.config_root}/nginx"
    return {"live": f"{site_dir}/{data.server_name}", "backups": f"{site_dir}/backups",
            "state_dir": data.get("state_dir", "/var/lib/watchme"),
            "script": f"{data.config_root}/scripts/nginx-safe-apply"}


def http2_style(version: tuple[int, ...] | None) -> str | None:
    """How this Nginx turns on HTTP/2: `http2 on;` from 1.25.1, the listen flag before
    (bookworm's 1.22), none when the version is unknown (HTTP/1.1 still works)."""
    if not version:
        return None
    return "directive" if version >= (1, 25, 1) else "listen"


def render_site(server_name: str, services, backup_dir: str, tls: dict | None = None,
                extra_locations=(), upstreams: dict[str, tuple[str, int]] | None = None) -> str:
    """tls: None for HTTP only, else {certificate, key, http2, acme_root}; extra_locations:
    the registry's ExtraLocation entries (the live site's non-service locations); upstreams:
    {service name: (address, port)} proxied to instead of the registry's upstream (a
    rollout's candidate container, watchme/rollout_site.py); every other byte is the same."""
    if upstreams:
        services = [s.model_copy(update={"upstream_host": upstreams[s.name][0],
                                         "port": upstreams[s.name][1]})
                    if s.name in upstreams else s for s in services]
    return get_template(str(TEMPLATE)).render(
        server_name=server_name, services=services, backup_dir=backup_dir, tls=tls,
        acme_path=ACME_PATH, extra_locations=extra_locations)


def probes(server_name: str, services, tls: bool, extra_locations=()) -> list[str]:
    """NAME|URL|STATUS|REDIRECT for the cycle script: every route, the extra locations (a
    `return` answers its own status, a proxied one 200), and the :80 redirect."""
    scheme = "https" if tls else "http"
    out = [f"{s.name}|{scheme}://{server_name}{s.probe_url_path}|{s.probe.expect}|"
           for s in services]
    out += [f"extra-{i}|{scheme}://{server_name}{x.path}|{x.probe_status}|"
            for i, x in enumerate(extra_locations, 1)]
    if tls:
        out.append(f"http-redirect|http://{server_name}/|301|https://{server_name}/")
    return out


class NginxVersion(FactBase):
    """The installed Nginx's version, else the one apt would install: (major, minor, patch)."""

    def command(self) -> str:
        return "nginx -v 2>&1 || apt-cache policy nginx 2>/dev/null | grep -i candidate || true"

    def process(self, output):
        m = re.search(r"(\d+)\.(\d+)\.(\d+)", " ".join(output))
        return tuple(int(x) for x in m.groups()) if m else None


class SiteState(FactBase):
    """sha256 of the site as last applied (reload and probes passed) and of the file on disk."""

    def command(self, live: str, record: str) -> str:
        return (f"printf 'applied=%s\\n' \"$(cat {shlex.quote(record)} 2>/dev/null)\"; "
                f"printf 'live=%s\\n' \"$(sha256sum < {shlex.quote(live)} 2>/dev/null | cut -d' ' -f1)\"")

    def process(self, output):
        return kv.parse(output)


def _apply(state, host, command, stdin=None):
    ok, stdout, stderr = remote.run(state, host, command, **({"_stdin": stdin} if stdin else {}))
    for line in stdout:
        if line.startswith("probe ok"):
            logger.info(f"{host.print_prefix}{line}")
        elif ok:
            logger.warning(f"{host.print_prefix}{line}")
        else:
            logger.error(f"{host.print_prefix}{line}")
    for line in stderr:
        logger.error(f"{host.print_prefix}{line}")
    if not ok:  # a failed operation: the deploy stops here for this host
        logger.error(f"{host.print_prefix}the Nginx site was not applied (see the lines above)")
    return ok


@operation()
def site(live: str, content: str, script: str, backup_dir: str, keep: int, state_dir: str,
         probes: list[str]):
    """Apply the rendered site through the safe cycle unless it is what Nginx last applied."""
    wanted = hashlib.sha256(content.encode()).hexdigest()
    record = f"{state_dir}/nginx-applied.sha256"
    now = host.get_fact(SiteState, live=live, record=record)
    if now.get("applied") == wanted and now.get("live") == wanted:
        host.noop(f"{live} is applied and up to date")
        return
    if now.get("live") == wanted:
        logger.warning(f"{host.print_prefix}{live} holds the rendered site but it was never "
                       "applied (reload and probes); applying it now")
    if state.config.DIFF or state.is_executing is False:
        current = host.get_fact(FileContents, path=live) or []
        for line in difflib.unified_diff([l + "\n" for l in current], content.splitlines(True),
                                         live, f"{live} (new)"):
            logger.info(f"    {line.rstrip()}")
    candidate = f"{state_dir}/nginx-candidate.conf"
    # The candidate comes in on the cycle's own stdin (base64: byte for byte), one session
    # instead of a temp directory, an upload and a move (issue 13).
    write = (f"mkdir -p {shlex.quote(state_dir)} && "
             f"base64 -d > {shlex.quote(candidate)}")
    command = shlex.join(["sh", script, "apply", candidate, live, backup_dir, str(keep),
                          state_dir, *probes])
    yield FunctionCommand(_apply, (f"{write} && {command}",),
                          {"stdin": base64.encodebytes(content.encode()).decode()})
