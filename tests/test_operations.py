"""Our operations, unit-tested pyinfra's way: each case is data (facts in, commands or the
noop out), run through the one shared fake host (tests/pyinfra_fake.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shlex
import subprocess
import tarfile

import pytest
from pyinfra.api import FunctionCommand

from tests.pyinfra_fake import run_op, text
from tasks.bootstrap import join_group
from watchme import bundle, nginx
from watchme.adopt import LinkStates, adopt_links, adopting
from watchme.units import units_enabled


# --- adopt_links: keep what is there, then link (one fact, one command) ------------------

LINK = "/etc/nginx/sites-enabled/api.hey-watch.me"
LIVE = "/opt/watchme/nginx/api.hey-watch.me"
BACKUP = "/opt/watchme/nginx/backups/etc_nginx_sites-enabled_api.hey-watch.me.backup.$(date +%Y%m%d_%H%M%S)"
KEEP = (f"if [ -e {LINK} ]; then mkdir -p /opt/watchme/nginx/backups && "
        f"cp -pL -- {LINK} {BACKUP}; fi")
SEED = f"if [ -s {LINK} ] && [ ! -s {LIVE} ]; then cp -L -- {LINK} {LIVE}; fi"
TOUCH = f"umask 022; [ -e {LIVE} ] || : > {LIVE}"
LN = [f"if [ -d {LINK} ] && [ ! -L {LINK} ]; then echo {LINK} is a directory >&2; exit 1; fi",
      "mkdir -p -- /etc/nginx/sites-enabled",
      f"ln -sfn -- {LIVE} {LINK}.watchme-new", f"mv -fT -- {LINK}.watchme-new {LINK}"]

# LinkStates: None missing, "" something that is not a link, else the link's target.
ADOPT_CASES = {
    "missing": (None, [TOUCH, *LN], None),
    "already ours": (LIVE, None, "1 link(s) already point at their targets"),
    "hand-managed file": ("", [TOUCH, KEEP, SEED, *LN], None),
    "link into the clone": ("/home/ubuntu/watchme-server-configs/x", [TOUCH, KEEP, SEED, *LN], None),
}


def _script(cmds) -> list[str]:
    """The lines of adopt_links' one `sh -c` script."""
    assert len(cmds) == 1
    argv = shlex.split(text(cmds)[0])
    assert argv[:2] == ["sh", "-c"] and len(argv) == 3
    lines = argv[2].splitlines()
    assert lines[0] == "set -e"
    return lines[1:]


@pytest.mark.parametrize("case", ADOPT_CASES, ids=str)
def test_adopt_links(case):
    fact, lines, noop = ADOPT_CASES[case]
    cmds, host = run_op(adopt_links, {"LinkStates": {LINK: fact}}, links={LINK: LIVE},
                        backup_dir="/opt/watchme/nginx/backups", seed=LIVE)
    if noop:
        assert cmds == [] and host.noops == [noop]
        return
    assert _script(cmds) == lines
    assert host.asked == [("LinkStates", {"paths": [LINK]})]


def test_adopt_links_without_backup_dir_keeps_the_copy_beside_the_file_and_links_only_what_differs():
    unit, other = "/etc/systemd/system/watchme-a.service", "/etc/systemd/system/watchme-b.service"
    cmds, _ = run_op(adopt_links, {"LinkStates": {unit: "", other: "/opt/watchme/systemd/b"}},
                     links={unit: "/opt/watchme/systemd/a", other: "/opt/watchme/systemd/b"})
    lines = _script(cmds)
    assert lines[0] == f"if [ -e {unit} ]; then cp -pL -- {unit} {unit}.backup.$(date +%Y%m%d_%H%M%S); fi"
    assert not any(other in l for l in lines)  # already ours: untouched


def test_adopt_links_quotes_paths():
    cmds, _ = run_op(adopt_links, {"LinkStates": {"/etc/x y": ""}}, links={"/etc/x y": "/t z"},
                     backup_dir="/b")
    lines = _script(cmds)
    assert shlex.split(lines[0].replace("$(date +%Y%m%d_%H%M%S)", ""))[3] == "/etc/x y"
    assert shlex.split(lines[-2])[-2:] == ["/t z", "/etc/x y.watchme-new"]


def test_link_states_fact_reads_targets_files_and_missing_paths():
    assert LinkStates().process(["link\t/etc/a\t/opt/a b", "other\t/etc/b", "missing\t/etc/c"]) == {
        "/etc/a": "/opt/a b", "/etc/b": "", "/etc/c": None}
    assert adopting({"/etc/a": "/x", "/etc/b": "/t", "/etc/c": None},
                    {"/etc/a": "/t", "/etc/b": "/t", "/etc/c": "/t"}) == {"/etc/a"}


# --- the bundle: every rendered file after one fact, in one command ------------------------

def _file(path, content, mode=0o644, user="root", group="root"):
    return bundle.File(path, content.encode(), mode, user, group)


def _state(f, **change):
    return {"kind": "file", "mode": f.mode, "user": f.user, "group": f.group,
            "sha256": f.sha256, **change}


UNIT = _file("/opt/watchme/systemd/a.service", "[Unit]\n")
SCRIPT = _file("/opt/watchme/scripts/x.py", "print(1)\n", mode=0o755)
DIR = bundle.Directory("/opt/watchme/systemd", 0o755, "root", "root")
DIR_OK = {"kind": "dir", "mode": 0o755, "user": "root", "group": "root", "sha256": None}
BUNDLE_CASES = {
    "up to date": ({UNIT.path: _state(UNIT), SCRIPT.path: _state(SCRIPT), DIR.path: DIR_OK}, []),
    "new host": ({}, [UNIT, SCRIPT]),
    "edited on the host": ({UNIT.path: _state(UNIT, sha256="0" * 64),
                            SCRIPT.path: _state(SCRIPT), DIR.path: DIR_OK}, [UNIT]),
    "mode changed": ({UNIT.path: _state(UNIT), SCRIPT.path: _state(SCRIPT, mode=0o644),
                      DIR.path: DIR_OK}, [SCRIPT]),
    "owner changed": ({UNIT.path: _state(UNIT, user="ubuntu"), SCRIPT.path: _state(SCRIPT),
                       DIR.path: DIR_OK}, [UNIT]),
    "a link where the file goes": ({UNIT.path: {**_state(UNIT), "kind": "link"},
                                    SCRIPT.path: _state(SCRIPT), DIR.path: DIR_OK}, [UNIT]),
}


@pytest.mark.parametrize("case", BUNDLE_CASES, ids=str)
def test_bundle_installs_only_the_changed_files(case):
    fact, todo = BUNDLE_CASES[case]
    cmds, host = run_op(bundle.install_files, {"BundleState": fact}, dirs=[DIR],
                        files=[UNIT, SCRIPT])
    assert host.asked == [("BundleState", {"paths": [DIR.path, UNIT.path, SCRIPT.path]})]
    if not todo:
        assert cmds == [] and host.noops == ["2 file(s) and 1 directorie(s) are up to date"]
        return
    assert len(cmds) == 1
    # The tar on stdin holds exactly the changed files, named by their index in the script.
    tar = tarfile.open(fileobj=io.BytesIO(base64.b64decode(cmds[0].connector_arguments["_stdin"])))
    assert [tar.extractfile(m).read() for m in tar.getmembers()] == [f.content for f in todo]
    script = shlex.split(text(cmds)[0])[2]
    for i, f in enumerate(todo):
        tmp = f"{f.path}.watchme-new"
        assert f'install -m {f.mode:o} -o root -g root -- "$t/{i}" {tmp}' in script
        assert f"mv -f -- {tmp} {f.path}" in script  # renamed over: never half a file
    for f in {UNIT, SCRIPT} - set(todo):
        assert f.path not in script


def test_bundle_fixes_a_directory_without_touching_the_files():
    fact = {UNIT.path: _state(UNIT), DIR.path: {**DIR_OK, "mode": 0o700}}
    cmds, _ = run_op(bundle.install_files, {"BundleState": fact}, dirs=[DIR], files=[UNIT])
    assert "_stdin" not in cmds[0].connector_arguments
    assert shlex.split(text(cmds)[0])[2].splitlines()[4:] == [
        "mkdir -p -- /opt/watchme/systemd", "chmod 755 -- /opt/watchme/systemd",
        "chown root:root -- /opt/watchme/systemd"]


def test_bundle_directory_without_owner_is_only_created():
    d = bundle.Directory("/home/ubuntu/clone/systemd")
    assert bundle.dir_ok({"kind": "dir", "mode": 0o775, "user": "ubuntu", "group": "ubuntu"}, d)
    assert not bundle.dir_ok({"kind": "missing"}, d)
    assert bundle.install_script([d], []).splitlines()[4:] == ["mkdir -p -- /home/ubuntu/clone/systemd"]


def test_bundle_script_quotes_paths_and_the_state_fact_parses_them():
    f = _file("/opt/x y/$(reboot)", "a")
    script = bundle.install_script([], [f])
    assert "mv -f -- '/opt/x y/$(reboot).watchme-new' '/opt/x y/$(reboot)'" in script
    assert "$(reboot)" in bundle.BundleState().command(paths=[f.path])
    assert "'/opt/x y/$(reboot)'" in bundle.BundleState().command(paths=[f.path])
    assert bundle.BundleState().process([f"file 644 root root - /opt/x y/f",
                                         f"{f.sha256}  /opt/x y/f",
                                         "dir 755 root root - /opt", "missing - - - - /n"]) == {
        "/opt/x y/f": {"kind": "file", "mode": 0o644, "user": "root", "group": "root",
                       "sha256": f.sha256},
        "/opt": {"kind": "dir", "mode": 0o755, "user": "root", "group": "root", "sha256": None},
        "/n": {"kind": "missing", "mode": None, "user": "-", "group": "-", "sha256": None}}
    with pytest.raises(ValueError, match="absolute"):
        bundle.BundleState().command(paths=["-delete"])  # find would take it for an action


def test_bundle_state_reads_every_kind_of_path_in_four_processes(tmp_path):
    """The fact's real command (sh, find, sha256sum) on real paths: the answer per kind."""
    import getpass
    import grp
    import hashlib
    d, f = tmp_path / "d x", tmp_path / "$(touch pwned)"
    d.mkdir(mode=0o750)
    d.chmod(0o750)
    f.write_text("a\n")
    f.chmod(0o640)
    (tmp_path / "to-dir").symlink_to(d)
    (tmp_path / "to-file").symlink_to(f)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo")
    paths = [str(p) for p in (d, f, tmp_path / "to-dir", tmp_path / "to-file",
                              tmp_path / "dangling", tmp_path / "fifo", tmp_path / "missing")]
    fact = bundle.BundleState()
    out = subprocess.run(["sh", "-c", fact.command(paths=paths)], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 0 and not (tmp_path / "pwned").exists()
    got = fact.process(out.stdout.splitlines())
    user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
    assert got == {
        str(d): {"kind": "dir", "mode": 0o750, "user": user, "group": group, "sha256": None},
        str(f): {"kind": "file", "mode": 0o640, "user": user, "group": group,
                 "sha256": hashlib.sha256(b"a\n").hexdigest()},
        # a link to a directory is that directory (stat -L); any other link is a link
        str(tmp_path / "to-dir"): {"kind": "dir", "mode": 0o750, "user": user, "group": group,
                                   "sha256": None},
        **{str(tmp_path / n): {"kind": k, "mode": None, "user": "-", "group": "-", "sha256": None}
           for n, k in (("to-file", "link"), ("dangling", "link"), ("fifo", "other"),
                        ("missing", "missing"))}}


def test_bundle_refuses_a_file_registered_after_it_was_installed():
    b = bundle.Bundle()
    b.add("/a", "x")
    b.sealed = True
    b.add("/a", "x")  # the same again (the network task asks for the scripts twice): fine
    with pytest.raises(RuntimeError, match="/b: registered after the bundle was installed"):
        b.add("/b", "y")
    other = bundle.Bundle()
    other.add("/a", "x")
    with pytest.raises(RuntimeError, match="rendered twice with different content"):
        other.add("/a", "y")


# --- units: one systemctl show, one command for a concern -------------------------------

def _units(**states):
    return {u: {"need_reload": False, "active": "", "running": r, "enabled": e}
            for u, (e, r) in states.items()}


UNITS_CASES = {
    "all as wanted": (_units(**{"i.service": (True, True), "a.service": (True, True)}), [], None),
    "fresh host": (_units(), ["systemctl enable -- i.service a.service",
                             "systemctl start -- i.service", "systemctl start -- a.service"], None),
    "changed unit restarted": (_units(**{"i.service": (True, True), "a.service": (True, True)}),
                               ["systemctl restart -- a.service"], ["a.service"]),
    "restart of a stopped unit starts it once": (
        _units(**{"i.service": (True, True), "a.service": (True, False)}),
        ["systemctl start -- a.service"], ["a.service"]),
}


@pytest.mark.parametrize("case", UNITS_CASES, ids=str)
def test_units_enabled(case):
    fact, commands, restart = UNITS_CASES[case]
    cmds, host = run_op(units_enabled, {"LoadedUnits": fact}, enable=["i.service", "a.service"],
                        start=["i.service", "a.service"], restart=restart)
    assert host.asked == [("LoadedUnits", {"units": ["a.service", "i.service"]})]
    if not commands:
        assert cmds == [] and host.noops == ["2 unit(s) enabled and running as wanted"]
        return
    assert text(cmds) == [" && ".join(commands)]


def test_units_enabled_enables_without_starting():
    cmds, _ = run_op(units_enabled, {"LoadedUnits": _units()}, enable=["b.service"])
    assert text(cmds) == ["systemctl enable -- b.service"]


# --- the docker group, from the host profile ---------------------------------------------

def test_join_group():
    cmds, host = run_op(join_group, {}, user="ubuntu", group="docker", groups=["ubuntu", "sudo"])
    assert text(cmds) == ["usermod -aG docker ubuntu"]
    cmds, host = run_op(join_group, {}, user="ubuntu", group="docker", groups=["docker"])
    assert cmds == [] and host.noops == ["ubuntu is in docker"]


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
    # One session: the candidate arrives on the cycle command's stdin (base64, byte for byte).
    assert len(cmds) == 1 and isinstance(cmds[0], FunctionCommand)
    assert cmds[0].args == (
        "mkdir -p /var/lib/watchme && base64 -d > /var/lib/watchme/nginx-candidate.conf && "
        "sh /opt/watchme/scripts/nginx-safe-apply apply /var/lib/watchme/nginx-candidate.conf "
        f"{LIVE} /b 10 /var/lib/watchme 'a|https://h/a/|200|' 'r|http://h/|301|https://h/'",)
    assert base64.b64decode(cmds[0].kwargs["stdin"]).decode() == SITE


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


def test_bundle_label_names_the_files_it_writes():
    name = "Write the rendered files (one bundle upload)"
    assert bundle.label(name, []) == name
    assert bundle.label(name, ["/opt/watchme/systemd/watchme-vault-api.service"]) == \
        f"{name}: watchme-vault-api.service"
    six = [f"/opt/watchme/x/{i}.conf" for i in range(6)]
    assert bundle.label(name, six) == f"{name}: 0.conf, 1.conf, 2.conf, 3.conf (+2 more)"


def test_link_states_and_unit_files_read_real_paths_in_one_find(tmp_path):
    """The facts' real commands (sh and find) on real paths, hostile names included."""
    from watchme.units import UnitFiles
    d = tmp_path / "system"
    d.mkdir()
    (d / "plain.service").write_text("[Unit]\n")
    (d / "linked.service").symlink_to("/opt/x y/linked.service")  # dangling, with a space
    (d / ".hidden.service").write_text("")
    (d / "other.timer").write_text("")
    (d / "dir.service").mkdir()
    units = subprocess.run(["sh", "-c", UnitFiles().command(directory=str(d))],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert UnitFiles().process(units) == {"linked.service": "/opt/x y/linked.service",
                                          "plain.service": None}
    gone = subprocess.run(["sh", "-c", UnitFiles().command(directory=str(tmp_path / "no"))],
                          capture_output=True, text=True)
    assert gone.returncode == 0 and UnitFiles().process(gone.stdout.splitlines()) == {}
    paths = [str(d / "linked.service"), str(d / "plain.service"), str(d / "dir.service"),
             str(tmp_path / "$(touch pwned)")]
    out = subprocess.run(["sh", "-c", LinkStates().command(paths=paths)], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 0 and not (tmp_path / "pwned").exists()
    assert LinkStates().process(out.stdout.splitlines()) == {
        paths[0]: "/opt/x y/linked.service", paths[1]: "", paths[2]: "", paths[3]: None}
    with pytest.raises(ValueError, match="absolute"):
        LinkStates().command(paths=["-delete"])
