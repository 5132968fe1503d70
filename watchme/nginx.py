"""The Nginx site: rendering, adopting hand-managed files, and the safe apply cycle.

pyinfra's files.template writes in place and files.link refuses a regular file, which is
right for them and wrong here: the seed's server has hand-managed files where our links
go, and a site must never be left on disk unless `nginx -t` and the route probes pass.
So two small operations of ours: `link` (keeps what it replaces as a backup) and `site`
(backup, candidate in place, nginx -t, reload, probe, restore), see files/nginx-safe-apply.sh.
"""

from __future__ import annotations

import hashlib
from io import StringIO
from pathlib import Path

from pyinfra import host, logger, state
from pyinfra.api import FactBase, FunctionCommand, StringCommand, operation
from pyinfra.api.command import FileUploadCommand
from pyinfra.api.util import get_template
from pyinfra.facts.files import FileContents, Sha256File

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "templates" / "nginx-site.conf.j2"


def render_site(server_name: str, services, backup_dir: str) -> str:
    return get_template(str(TEMPLATE)).render(
        server_name=server_name, services=services, backup_dir=backup_dir)


class LinkStates(FactBase):
    """For each path: ("link", target) | ("file", "") | ("missing", "") | ("other", "")."""

    def command(self, paths: list[str]) -> str:
        checks = " ".join(f"'{p}'" for p in paths)
        return (f"for p in {checks}; do if [ -L \"$p\" ]; then echo \"$p link $(readlink \"$p\")\"; "
                "elif [ -f \"$p\" ]; then echo \"$p file\"; elif [ -e \"$p\" ]; then echo \"$p other\"; "
                "else echo \"$p missing\"; fi; done")

    def process(self, output):
        states = {}
        for line in output:
            path, kind, *target = line.split(" ", 2)
            states[path] = (kind, target[0] if target else "")
        return states


@operation()
def link(path: str, target: str, backup_dir: str, all_paths: list[str]):
    """`path` -> `target`; anything else found at `path` is moved to backup_dir, never deleted.

    all_paths: every link this deploy manages, so one command reads all their states.
    """
    kind, current = host.get_fact(LinkStates, paths=all_paths)[path]
    if kind == "link" and current == target:
        host.noop(f"{path} already links to {target}")
        return
    if kind == "other":
        raise OSError(f"{path} is a directory or device; move it away by hand")
    if kind != "missing":
        backup = f"{backup_dir}/{path.strip('/').replace('/', '_')}.backup.$(date +%Y%m%d_%H%M%S)"
        logger.warning(f"{host.print_prefix}{path} is a {'link to ' + current if kind == 'link' else 'hand-managed file'};"
                       f" keeping it as {backup}")
        yield f"mkdir -p {backup_dir}"
        if kind == "file":
            # First deploy on a hand-managed server: the operator's site becomes the
            # "previous" version the safe apply cycle compares with and restores.
            yield f"[ -s {target} ] || cp -p {path} {target}"
        yield f"mv {path} {backup}"
    yield f"ln -s {target} {path}"


def _apply(state, host, script, candidate, live, backup_dir, keep, vhost, routes):
    args = " ".join(f"'{a}'" for a in (candidate, live, backup_dir, keep, vhost, *routes))
    ok, output = host.run_shell_command(StringCommand(f"sh {script} {args}"), _sudo=True)
    for line in output.stdout_lines:
        if line.startswith("probe ok"):
            logger.info(f"{host.print_prefix}{line}")
        elif ok:
            logger.warning(f"{host.print_prefix}{line}")
        else:
            logger.error(f"{host.print_prefix}{line}")
    return ok


@operation()
def site(live: str, content: str, script: str, backup_dir: str, keep: int, vhost: str,
         routes: list[str]):
    """Apply the rendered site through the safe cycle, only when it differs from the live one."""
    wanted = hashlib.sha256(content.encode()).hexdigest()
    if host.get_fact(Sha256File, path=live) == wanted:
        host.noop(f"{live} is up to date")
        return
    if state.config.DIFF or state.is_executing is False:
        current = host.get_fact(FileContents, path=live) or []
        import difflib

        for line in difflib.unified_diff([l + "\n" for l in current], content.splitlines(True),
                                         live, f"{live} (new)"):
            logger.info(f"    {line.rstrip()}")
    candidate = f"{live}.candidate"
    yield FileUploadCommand(StringIO(content), candidate)
    yield FunctionCommand(_apply, (script, candidate, live, backup_dir, keep, vhost, routes), {})
