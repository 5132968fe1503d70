"""A rollout's Nginx switch: the service's route to the candidate container and back, through
the deploy's own safe cycle (files/nginx-safe-apply.sh: staged `nginx -t`, backup, graceful
reload, probes, restore on a broken route; never a restart).

The site is rendered exactly as the deploy renders it (watchme/nginx.py render_site, the same
registry, TLS settings and Nginx version), once as the registry says and once with the one
service's upstream replaced by the candidate. The switch is only attempted when the live site
is byte-identical to the registry's render: a rollout never carries other route changes, and
switching back leaves exactly what the deploy renders (its next run is a no-op). Otherwise
the rollout falls back to the in-place restart and says why.
"""

from __future__ import annotations

import hashlib
import shlex

from watchme import nginx, placement, settings




class Site:
    """The registry's site for one host and its variants with a candidate upstream."""

    def __init__(self, state, host, r):
        from pyinfra.context import ctx_host, ctx_state

        d = host.data
        self.data, self.r = d, r
        with ctx_state.use(state), ctx_host.use(host):
            self.services = placement.routed(d.registry, state.inventory, placement.private_address)
        ok, out = r.run("nginx -v 2>&1")
        version = nginx.NginxVersion().process(out.splitlines()) if ok else None
        st = settings.validate(d)  # the deploy's values (tasks/tls.py reads the same keys)
        self.tls = None if st.http_only else {
            "certificate": st.tls_certificate, "key": st.tls_certificate_key,
            "acme_root": nginx.ACME_ROOT, "http2": nginx.http2_style(version)}
        self.paths = nginx.site_paths(d)

    def render(self, upstreams: dict[str, tuple[str, int]] | None = None) -> str:
        return nginx.render_site(self.data.server_name, self.services, self.paths["backups"],
                                 self.tls, self.data.registry.extra_locations, upstreams)

    def live(self) -> str | None:
        ok, out = self.r.run(f"sha256sum < {shlex.quote(self.paths['live'])} | cut -d' ' -f1")
        return out.strip() if ok and out.strip() else None

    def is_live(self, content: str) -> bool:
        return self.live() == sha(content)

    def apply(self, content: str) -> str:
        """'' once the site is applied (reload and probes passed); else the cycle's output."""
        p = self.paths
        cand = f"{p['state_dir']}/nginx-candidate.conf"
        self.r.write(cand, content)
        probes = nginx.probes(self.data.server_name, self.services, self.tls is not None,
                              self.data.registry.extra_locations)
        cmd = shlex.join(["sh", p["script"], "apply", cand, p["live"], p["backups"],
                          str(self.data.get("nginx_backups_keep", 10)), p["state_dir"], *probes])
        ok, out = self.r.run(cmd, timeout=120)
        if ok and self.is_live(content):
            return ""
        return "the Nginx safe cycle refused the site: " + " | ".join(out.strip().splitlines()[-6:])


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
