"""Our small operations, unit-tested pyinfra's way: facts in, commands or noop out."""

from __future__ import annotations

import hashlib

import pytest
from pyinfra.api import FunctionCommand
from pyinfra.api.command import FileUploadCommand

from tests.pyinfra_fake import run_op
from watchme import nginx


LINK = "/etc/nginx/sites-enabled/api.hey-watch.me"
LIVE = "/srv/cfg/nginx/api.hey-watch.me"


def link(kind, target=""):
    return run_op(nginx.link, {"LinkStates": {LINK: (kind, target)}}, path=LINK, target=LIVE,
                  backup_dir="/srv/cfg/nginx/backups", all_paths=[LINK])


def test_link_noop_when_already_ours():
    cmds, host = link("link", LIVE)
    assert cmds == [] and host.noops == [f"{LINK} already links to {LIVE}"]


def test_link_created_when_missing():
    assert link("missing")[0] == [f"ln -s {LIVE} {LINK}"]


def test_hand_managed_file_is_kept_and_becomes_the_previous_site():
    cmds, _ = link("file")
    assert cmds[0] == "mkdir -p /srv/cfg/nginx/backups"
    assert cmds[1] == f"[ -s {LIVE} ] || cp -p {LINK} {LIVE}"
    assert cmds[2].startswith(f"mv {LINK} /srv/cfg/nginx/backups/etc_nginx_sites-enabled_api.hey-watch.me.backup.")
    assert cmds[3] == f"ln -s {LIVE} {LINK}"


def test_foreign_link_is_moved_not_deleted():
    cmds, _ = link("link", "../sites-available/api.hey-watch.me")
    assert not any(c.startswith("rm") for c in cmds)
    assert cmds[1].startswith(f"mv {LINK} ") and cmds[2] == f"ln -s {LIVE} {LINK}"


def test_link_refuses_a_directory():
    with pytest.raises(OSError, match="is a directory or device"):
        link("other")


SITE = "server { listen 80; }\n"


def site(live_sha):
    return run_op(nginx.site, {"Sha256File": live_sha, "FileContents": ["old"]}, live=LIVE,
                  content=SITE, script="/srv/cfg/scripts/nginx-safe-apply",
                  backup_dir="/b", keep=10, vhost="api.hey-watch.me", routes=["a|/a/|200"])


def test_site_noop_when_live_matches():
    cmds, host = site(hashlib.sha256(SITE.encode()).hexdigest())
    assert cmds == [] and host.noops == [f"{LIVE} is up to date"]


@pytest.mark.parametrize("live_sha", [None, "0" * 64])
def test_site_uploads_candidate_then_runs_the_safe_cycle(live_sha):
    cmds, _ = site(live_sha)
    assert isinstance(cmds[0], FileUploadCommand) and cmds[0].dest == f"{LIVE}.candidate"
    assert cmds[0].src.read() == SITE
    assert isinstance(cmds[1], FunctionCommand)
    assert cmds[1].args == ("/srv/cfg/scripts/nginx-safe-apply", f"{LIVE}.candidate", LIVE,
                            "/b", 10, "api.hey-watch.me", ["a|/a/|200"])
