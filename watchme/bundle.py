"""Every file the deploy renders, installed from ONE bundle after ONE fact (issue 13).

Stock files.put / files.template cost about seven SSH sessions per file on a first converge
(File and Directory facts, a temp directory, the upload, mv, chmod, chown) and three on a
no-op; over a 100 ms link that was most of a fresh host's converge. Here the tasks register
what they render (`add`: path, content, mode, owner) and the directories it lives in
(`directory`); `install` then reads `BundleState` (sha256, mode and owner of every path in one
command), builds a tar of the changed files only and installs them in one command: the
tar comes in on stdin, each file is written beside its destination and renamed over it, so
a reader never sees half a file.

Downstream operations ask `changed(path)`: computed at prepare time from the same fact,
before anything changed (as pyinfra's own `will_change` is), plain Python, no extra round
trip. The install operation reads the fact again when it runs, so what it writes is decided
from the host as it is then, never from a stale answer.

Files with their own apply cycle are not in the bundle: the Nginx site (staged, `nginx -t`,
reload, probes: watchme/nginx.py), and files that may belong to the operator (their compose
files, migrated by tasks/network.py after a backup).
"""

from __future__ import annotations

import base64
import hashlib
import io
import posixpath
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, QuoteString, StringCommand, operation
from pyinfra.api.util import get_template
from pyinfra.context import ctx_host

ROOT = Path(__file__).resolve().parent.parent
# Staged beside the destination (same filesystem: rename is atomic), then renamed over it.
TMP_SUFFIX = ".watchme-new"


@dataclass(frozen=True)
class File:
    path: str
    content: bytes
    mode: int
    user: str = "root"
    group: str = "root"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class Directory:
    path: str
    mode: int | None = None  # None: created 0755 when missing, an existing one kept as it is
    user: str | None = None
    group: str | None = None


def _mode(mode: str | int) -> int:
    return mode if isinstance(mode, int) else int(str(mode), 8)


class BundleState(FactBase):
    """{path: {"kind": file|dir|link|other|missing, "mode": int, "user", "group", "sha256"}}
    for every given path, in one command (sha256 only for regular files).

    Four processes whatever the number of paths (three finds and one sha256sum): a stat and
    a sha256sum per file cost ~100 ms of the host's CPU on every no-op (bench/RESULTS.md).
    Directories are followed like `stat -L` (a link to a directory counts as one, with the
    target's mode and owner); any other link is a "link"."""

    def command(self, paths: list[str]) -> str:
        if not all(p.startswith("/") for p in paths):  # find would read "-x" as an option
            raise ValueError(f"BundleState takes absolute paths only: {paths}")
        return (f"set -- {' '.join(shlex.quote(p) for p in paths)}\n"
                "for p; do [ -e \"$p\" ] || [ -L \"$p\" ] || echo \"missing - - - - $p\"; done\n"
                "find -H \"$@\" -maxdepth 0 -type d -printf 'dir %m %u %g - %p\\n' 2>/dev/null\n"
                "find \"$@\" -maxdepth 0 ! -xtype d \\( -type l -printf 'link - - - - %p\\n' -o "
                "-type f -printf 'file %m %u %g - %p\\n' -o -printf 'other - - - - %p\\n' \\) "
                "2>/dev/null\n"
                "find \"$@\" -maxdepth 0 -type f -exec sha256sum -- {} + 2>/dev/null\n"
                "true")

    def process(self, output):
        out, sums = {}, {}
        for line in output:
            digest, sep, path = line.partition("  ")  # sha256sum's "<hex>  <path>"
            if sep and len(digest) == 64:
                sums[path] = digest
                continue
            parts = line.split(" ", 5)
            if len(parts) != 6:
                continue
            kind, mode, user, group, _, path = parts
            out[path] = {"kind": kind, "mode": int(mode, 8) if mode != "-" else None,
                         "user": user, "group": group, "sha256": None}
        for path, digest in sums.items():
            if out.get(path, {}).get("kind") == "file":
                out[path]["sha256"] = digest
        return out


def file_ok(found: dict | None, f: File) -> bool:
    return bool(found) and found["kind"] == "file" and found["sha256"] == f.sha256 and (
        found["mode"], found["user"], found["group"]) == (f.mode, f.user, f.group)


def dir_ok(found: dict | None, d: Directory) -> bool:
    if not found or found["kind"] != "dir":
        return False
    return all(want is None or want == have for want, have in (
        (d.mode, found["mode"]), (d.user, found["user"]), (d.group, found["group"])))


def tar_of(files: list[File]) -> bytes:
    """A gzipped tar of the contents, named 0, 1, ... in the order of `files`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for i, f in enumerate(files):
            info = tarfile.TarInfo(str(i))
            info.size, info.mode, info.mtime = len(f.content), 0o600, 0
            tar.addfile(info, io.BytesIO(f.content))
    return buf.getvalue()


def install_script(dirs: list[Directory], files: list[File]) -> str:
    """The shell script that unpacks the tar from stdin and installs each file via temp + rename."""
    q = shlex.quote
    lines = ["set -eu", "umask 022", 't=$(mktemp -d)', "trap 'rm -rf \"$t\"' EXIT"]
    for d in dirs:
        lines.append(f"mkdir -p -- {q(d.path)}")
        if d.mode is not None:
            lines.append(f"chmod {d.mode:o} -- {q(d.path)}")
        if d.user or d.group:
            owner = (d.user or "") + (f":{d.group}" if d.group else "")
            lines.append(f"chown {q(owner)} -- {q(d.path)}")
    if files:
        lines.append('base64 -d | tar -xzf - -C "$t"')
    for i, f in enumerate(files):
        tmp = q(f.path + TMP_SUFFIX)
        lines.append(f"mkdir -p -- {q(posixpath.dirname(f.path))}")
        lines.append(f'install -m {f.mode:o} -o {q(f.user)} -g {q(f.group)} -- "$t/{i}" {tmp}')
        lines.append(f"mv -f -- {tmp} {q(f.path)}")
    return "\n".join(lines)


class Bundle:
    """What one host's deploy renders; sealed when `install()` calls the operation."""

    def __init__(self):
        self.files: dict[str, File] = {}
        self.dirs: dict[str, Directory] = {}
        self.sealed = False
        self.state: dict | None = None

    def _check_open(self, path: str, known: bool) -> None:
        if self.sealed and not known:
            raise RuntimeError(f"{path}: registered after the bundle was installed; "
                               "render it before bundle.install() (deploy.py)")

    def add(self, path: str, content: str | bytes, mode: str | int = "644", user: str = "root",
            group: str = "root") -> None:
        data = content.encode() if isinstance(content, str) else content
        f = File(path, data, _mode(mode), user, group)
        self._check_open(path, self.files.get(path) == f)
        if path in self.files and self.files[path] != f:
            raise RuntimeError(f"{path}: rendered twice with different content")
        self.files[path] = f

    def directory(self, path: str, mode: str | int | None = None, user: str | None = None,
                  group: str | None = None) -> None:
        d = Directory(path, None if mode is None else _mode(mode), user, group)
        self._check_open(path, self.dirs.get(path) == d)
        self.dirs[path] = d

    def paths(self) -> list[str]:
        return [*self.dirs, *self.files]


def current() -> Bundle:
    """The bundle of the host being prepared (one per host, like host_profile.read)."""
    h = ctx_host.get()
    return h.__dict__.setdefault("_watchme_bundle", Bundle())


def add(path: str, content: str | bytes, mode: str | int = "644", user: str = "root",
        group: str = "root") -> None:
    current().add(path, content, mode, user, group)


def directory(path: str, mode: str | int | None = None, user: str | None = None,
              group: str | None = None) -> None:
    current().directory(path, mode, user, group)


def render(template: str, **data) -> str:
    """A template rendered as stock files.template renders it (same Jinja2 environment:
    StrictUndefined, trailing newline kept), so the sha256 matches what it wrote before."""
    return get_template(str(ROOT / template)).render(data)


def changed(path: str) -> bool:
    """Whether the bundle will (re)write this file: from the fact read before any change."""
    b = current()
    if b.state is None:
        raise RuntimeError("bundle.changed() before bundle.install()")
    return path in b.files and not file_ok(b.state.get(path), b.files[path])


@operation()
def install_files(dirs: list[Directory], files: list[File]):
    """Install the changed files of the bundle in one command (the tar on stdin).

    Own operation, not files.put per file: one fact for all (BundleState) and one command
    for every changed file, instead of ~7 SSH sessions per file (see the module docstring).
    """
    state = host.get_fact(BundleState, paths=[*(d.path for d in dirs), *(f.path for f in files)])
    todo_dirs = [d for d in dirs if not dir_ok(state.get(d.path), d)]
    todo = [f for f in files if not file_ok(state.get(f.path), f)]
    if not todo_dirs and not todo:
        host.noop(f"{len(files)} file(s) and {len(dirs)} directorie(s) are up to date")
        return
    payload = base64.encodebytes(tar_of(todo)).decode() if todo else None
    yield StringCommand("sh", "-c", QuoteString(install_script(todo_dirs, todo)),
                        **({"_stdin": payload} if payload else {}))


def install(name: str) -> None:
    """Seal the host's bundle, read its state (for `changed`), and call the install operation."""
    b = current()
    b.sealed = True
    if b.state is None:
        b.state = host.get_fact(BundleState, paths=b.paths())
    install_files(name=label(name, [f.path for f in b.files.values() if not file_ok(b.state.get(f.path), f)]),
                  dirs=list(b.dirs.values()), files=list(b.files.values()))


def label(name: str, paths: list[str], shown: int = 4) -> str:
    """The operation's name with the files it writes, so a preview (and the deploy's output)
    says which ones: "<name>: a.service, b.conf (+3 more)". The op's identity is its place
    in deploy.py, not its name, so hosts may differ here."""
    if not paths:
        return name
    names = [p.rsplit("/", 1)[-1] for p in paths]
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return f"{name}: {', '.join(names[:shown])}{more}"
