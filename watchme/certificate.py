"""Whether the certificate files the site names are there, as Nginx will open them.

certbot keeps /etc/letsencrypt/live/<name>/*.pem as symlinks into ../../archive/; pyinfra's
`File` fact answers False for a symlink, which read the seed's live certificate as missing
(and a test host then wrote a self-signed one through the links over the real one).
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase


class MissingFiles(FactBase):
    """The paths that do not resolve to a regular file (`test -f` follows symlinks)."""

    def command(self, paths: list[str]) -> str:
        return "; ".join(f"[ -f {shlex.quote(p)} ] || echo {shlex.quote(p)}" for p in paths) + "; true"

    def process(self, output):
        return [line for line in output if line.strip()]
