"""HTTPS for the site: the certificate must be there before the site asks for it.

The seed's users call https://api.hey-watch.me/...; certbot keeps the certificate in
/etc/letsencrypt/live/<name>/ and renews it with its timer. Renewal reloads Nginx through
the safe cycle's `reload` (nginx -t first), never a raw reload. A missing certificate stops
the deploy before any change, unless the operator asked for HTTP only (http_only) or this
is a test host (tls_self_signed: a self-signed certificate at the configured paths).
"""

from __future__ import annotations

import re
import shlex

from pyinfra import host, logger
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import server

from watchme import bundle, placement
from watchme.certificate import MissingFiles
from watchme.nginx import ACME_ROOT
from watchme.units import units_enabled

HOOK = "/etc/letsencrypt/renewal-hooks/deploy/watchme-nginx-reload"
_PATH = re.compile(r"/[A-Za-z0-9._/-]+")


def settings() -> dict | None:
    """None for HTTP only; else the certificate paths, checked before they reach nginx."""
    d = host.data
    if d.get("http_only", False):
        return None
    out = {"certificate": d.get("tls_certificate", "/etc/letsencrypt/live/api.hey-watch.me/fullchain.pem"),
           "key": d.get("tls_certificate_key", "/etc/letsencrypt/live/api.hey-watch.me/privkey.pem"),
           "acme_root": ACME_ROOT}
    for field, key in (("tls_certificate", "certificate"), ("tls_certificate_key", "key")):
        if not _PATH.fullmatch(out[key]) or ".." in out[key]:
            raise DeployError(f"{host.name}: {field}: {out[key]!r} is not an absolute path of "
                              "letters, digits and ._-/; fix it in group_data")
    return out


def render() -> None:
    """Register the ACME webroot and certbot's deploy hook (a safe reload) in the bundle."""
    if not placement.is_front(host) or settings() is None:
        return
    script = f"{host.data.config_root}/scripts/nginx-safe-apply"
    hook = ("#!/bin/sh\n# Installed by watchme-server-configs (tasks/tls.py): after a renewal,\n"
            "# nginx -t then a checked reload, never a raw reload.\n"
            f"exec sh {shlex.quote(script)} reload\n")
    bundle.directory(ACME_ROOT, mode="755")
    bundle.add(HOOK, hook, mode="755")


def apply() -> None:
    if not placement.is_front(host):
        return  # the certificate is the front's: only it serves the public site (issue 14)
    tls = settings()
    if tls is None:
        return
    # certbot's live/ files are symlinks: they count when they resolve to a file.
    missing = host.get_fact(MissingFiles, paths=[tls["certificate"], tls["key"]])
    self_signed = host.data.get("tls_self_signed", False)
    if missing and not self_signed:
        raise DeployError(
            f"{host.name}: tls_certificate/tls_certificate_key: {', '.join(missing)} not on the "
            "host; nothing was changed. Get the certificate first (README: HTTPS, certbot "
            "certonly --webroot), or deploy with --data http_only=true for a site on :80 only")
    # certbot itself is the bootstrap's (watchme/packages.py): it keeps a snap or another form
    # it finds, so installing the package here would put a second certbot over it.
    if missing:
        cert, key = tls["certificate"], tls["key"]
        name = host.data.get("server_name", "api.hey-watch.me")
        server.shell(
            name=f"Self-signed certificate for {name} (tls_self_signed: test hosts only)",
            commands=[" && ".join([  # one session (issue 13), openssl installed if missing
                "{ command -v openssl >/dev/null || DEBIAN_FRONTEND=noninteractive "
                "apt-get install -y --no-install-recommends openssl; }",
                shlex.join(["mkdir", "-p", cert.rsplit("/", 1)[0], key.rsplit("/", 1)[0]]),
                shlex.join(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-days", "825", "-subj", f"/CN={name}",
                            "-addext", f"subjectAltName=DNS:{name}",
                            "-keyout", key, "-out", cert]),
                shlex.join(["chmod", "600", key]),
            ])])
    timer = host.data.get("certbot_timer", "certbot.timer")
    if timer:
        units_enabled(name=f"Enable {timer} (renewal)", enable=[timer], start=[timer])
    else:
        logger.info(f"{host.print_prefix}tls: certbot {host.data.get('certbot_command', '')} "
                    "renews with its own timer (a snap: snapd's), kept as found")
