"""Our operations, unit-tested pyinfra's way: each case is data (facts in, commands or the
noop out), run through the one shared fake host (tests/pyinfra_fake.py)."""

from __future__ import annotations

import hashlib
import shlex

import pytest
from pyinfra.api import FunctionCommand
from pyinfra.api.command import FileUploadCommand
from pyinfra.operations import files

from tests.pyinfra_fake import run_op, text
from watchme import nginx
from watchme.adopt import adopt


# --- adopt, then stock files.link -------------------------------------------------------

LINK = "/etc/nginx/sites-enabled/api.hey-watch.me"
LIVE = "/opt/watchme/nginx/api.hey-watch.me"
BACKUP = "/opt/watchme/nginx/backups/etc_nginx_sites-enabled_api.hey-watch.me.backup.$(date +%Y%m%d_%H%M%S)"
KEEP = (f"if [ -e {LINK} ]; then mkdir -p /opt/watchme/nginx/backups && "
        f"cp -pL -- {LINK} {BACKUP}; fi")
SEED = f"if [ -s {LINK} ] && [ ! -s {LIVE} ]; then cp -L -- {LINK} {LIVE}; fi"

# Link fact: None missing, False not a link (a file), a dict for a link.
ADOPT_CASES = {
    "missing": (None, [], f"{LINK} does not exist yet"),
    "already ours": ({"link_target": LIVE}, [], f"{LINK} already links to {LIVE}"),
    "hand-managed file": (False, [KEEP, SEED], None),
    "link into the clone": ({"link_target": "/home/ubuntu/watchme-server-configs/x"},
                            [KEEP, SEED], None),
}


@pytest.mark.parametrize("case", ADOPT_CASES, ids=str)
def test_adopt(case):
    fact, commands, noop = ADOPT_CASES[case]
    cmds, host = run_op(adopt, {"Link": fact}, path=LINK, target=LIVE,
                        backup_dir="/opt/watchme/nginx/backups", seed=LIVE)
    assert text(cmds) == commands
    assert host.noops == ([noop] if noop else [])


def test_adopt_without_backup_dir_keeps_the_copy_beside_the_file():
    unit = "/etc/systemd/system/watchme-a.service"
    cmds, _ = run_op(adopt, {"Link": False}, path=unit, target="/opt/watchme/systemd/a")
    assert text(cmds) == [f"if [ -e {unit} ]; then cp -pL -- {unit} {unit}.backup.$(date +%Y%m%d_%H%M%S); fi"]


def test_adopt_quotes_paths():
    cmds, _ = run_op(adopt, {"Link": False}, path="/etc/x y", target="/t", backup_dir="/b")
    assert shlex.split(text(cmds)[0].replace("$(date +%Y%m%d_%H%M%S)", ""))[3] == "/etc/x y"


# What stock files.link does after adopt (pyinfra 3.10): a file is removed (adopt kept it),
# a foreign link replaced; never a second, differently named backup.
LINK_CASES = {
    "file": (False, [f"rm -rf {LINK}", f"ln -s {LIVE} {LINK}"]),
    "foreign link": ({"link_target": "/x", "user": "root", "group": "root"},
                     [f"rm -f {LINK}", f"ln -s {LIVE} {LINK}"]),
}


@pytest.mark.parametrize("case", LINK_CASES, ids=str)
def test_stock_link_after_adopt(case):
    fact, commands = LINK_CASES[case]
    cmds, _ = run_op(files.link, {"Link": fact, "Directory": {"mode": 755}}, path=LINK,
                     target=LIVE, force=True, force_backup=False)
    assert text(cmds) == commands


# --- the site ---------------------------------------------------------------------------

SITE = "server { listen 80; }\n"
SHA = hashlib.sha256(SITE.encode()).hexdigest()
SITE_CASES = {
    "applied and on disk": ({"applied": SHA, "live": SHA}, f"{LIVE} is applied and up to date"),
    "on disk, never applied (killed before reload)": ({"applied": "", "live": SHA}, None),
    "applied, then edited by hand": ({"applied": SHA, "live": "0" * 64}, None),
    "new server": ({"applied": "", "live": ""}, None),
}


@pytest.mark.parametrize("case", SITE_CASES, ids=str)
def test_site(case):
    fact, noop = SITE_CASES[case]
    cmds, host = run_op(nginx.site, {"SiteState": fact, "FileContents": ["old"]}, live=LIVE,
                        content=SITE, script="/opt/watchme/scripts/nginx-safe-apply",
                        backup_dir="/b", keep=10, state_dir="/var/lib/watchme",
                        probes=["a|https://h/a/|200|", "r|http://h/|301|https://h/"])
    if noop:
        assert cmds == [] and host.noops == [noop]
        return
    assert cmds[0] == "mkdir -p /var/lib/watchme"
    assert isinstance(cmds[1], FileUploadCommand)
    assert cmds[1].dest == "/var/lib/watchme/nginx-candidate.conf" and cmds[1].src.read() == SITE
    assert isinstance(cmds[2], FunctionCommand)
    assert cmds[2].args == (
        "sh /opt/watchme/scripts/nginx-safe-apply apply /var/lib/watchme/nginx-candidate.conf "
        f"{LIVE} /b 10 /var/lib/watchme 'a|https://h/a/|200|' 'r|http://h/|301|https://h/'",)


def test_site_state_fact_parses_both_hashes():
    assert nginx.SiteState().process([f"applied={SHA}", "live="]) == {"applied": SHA, "live": ""}


@pytest.mark.parametrize("output, version, style", [
    (["nginx version: nginx/1.22.1"], (1, 22, 1), "listen"),
    (["nginx version: nginx/1.26.0"], (1, 26, 0), "directive"),
    (["  Candidate: 1.22.1-9+deb12u1"], (1, 22, 1), "listen"),
    ([], None, None),
])
def test_nginx_version_and_http2(output, version, style):
    assert nginx.NginxVersion().process(output) == version
    assert nginx.http2_style(version) == style


def test_probes_cover_https_routes_and_the_redirect():
    from types import SimpleNamespace as S
    svc = S(name="a", probe_url_path="/a/", probe=S(expect=200))
    assert nginx.probes("h", [svc], tls=True) == ["a|https://h/a/|200|", "http-redirect|http://h/|301|https://h/"]
    assert nginx.probes("h", [svc], tls=False) == ["a|http://h/a/|200|"]
