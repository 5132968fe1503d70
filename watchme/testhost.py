"""Real test hosts: systemd containers built from Debian packages, reached over SSH.

The image is built once per machine with debootstrap and `docker import` (no registry is
reachable here), tagged by a hash of its recipe. Each host gets fresh SSH host keys at boot
and a freshly generated client key; its host key is pinned out of band (read through
`docker exec`), so even test hosts are reached with strict host key checking.

    python -m watchme.testhost build            # build (or reuse) the image
    python -m watchme.testhost start [--local]  # start a host, print its state file
    python -m watchme.testhost stop NAME
    python -m watchme.testhost reap             # remove hosts left by crashed runs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("WATCHME_STATE_DIR", ROOT / ".testhost"))
CACHE_DIR = Path(os.environ.get("WATCHME_CACHE_DIR", Path.home() / ".cache" / "watchme"))
LABEL = "watchme.testhost"

SUITE = "bookworm"
MIRROR = os.environ.get("WATCHME_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ["systemd", "systemd-sysv", "openssh-server", "sudo", "python3", "ca-certificates"]

# Runs inside the debootstrapped tree (chroot). Everything that shapes the image is here or
# in the constants above, so the hash of this recipe names the image.
CONFIGURE = r"""
set -eu
useradd --create-home --shell /bin/bash ubuntu
echo 'ubuntu ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-ubuntu
chmod 0440 /etc/sudoers.d/90-ubuntu
install -d -o ubuntu -g ubuntu -m 0700 /home/ubuntu/.ssh
# Fresh host keys for every container: none baked into the image, made before sshd starts.
rm -f /etc/ssh/ssh_host_*
mkdir -p /etc/systemd/system/ssh.service.d
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
  > /etc/systemd/system/ssh.service.d/keygen.conf
printf 'PasswordAuthentication no\nUseDNS no\n' > /etc/ssh/sshd_config.d/watchme-test.conf
systemctl enable ssh.service
# Units that cannot work in a container and only slow the boot down.
for u in getty@tty1.service console-getty.service systemd-logind.service \
         systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer; do
  systemctl mask "$u" || true
done
echo "deb {mirror} {suite} main" > /etc/apt/sources.list
echo "deb {mirror} {suite}-updates main" >> /etc/apt/sources.list
echo watchme-testhost > /etc/hostname
apt-get clean
rm -rf /var/lib/apt/lists/*
"""

RUN_FLAGS = [
    "--memory", "2g", "--cpus", "2",  # the size of the production t4g.small
    "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
    "--stop-signal", "SIGRTMIN+3",  # systemd's clean shutdown signal
]


@dataclass
class TestHost:
    name: str
    port: int
    user: str
    key: str
    known_hosts: str

    @property
    def ssh_config(self) -> str:
        return str(Path(self.key).parent / "ssh_config")

    @property
    def ssh_command(self) -> str:
        return f"ssh -F {self.ssh_config} {self.name}"

    def env(self) -> dict[str, str]:
        """Environment that points inventory.py at this host (as an operator would)."""
        return {"WATCHME_HOSTS": f"{self.user}@127.0.0.1:{self.port}",
                "WATCHME_SSH_KEY": self.key, "WATCHME_KNOWN_HOSTS": self.known_hosts}


def log(msg: str) -> None:
    print(f"[testhost] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    kw.setdefault("text", True)
    return subprocess.run(cmd, **kw)


def docker_ok() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def ensure_docker(timeout: float = 60) -> None:
    """Start dockerd in the background when none answers (CI machines start without one)."""
    if docker_ok():
        return
    if not shutil.which("dockerd"):
        sys.exit("[testhost] no Docker engine: install docker.io (make deps does)")
    log("no Docker engine answers; starting dockerd in the background")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    logf = open(CACHE_DIR / "dockerd.log", "ab")
    subprocess.Popen(["dockerd"], stdout=logf, stderr=logf, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if docker_ok():
            return
        time.sleep(0.5)
    sys.exit(f"[testhost] dockerd did not answer within {timeout}s; see {CACHE_DIR}/dockerd.log")


def recipe_hash() -> str:
    text = json.dumps([SUITE, MIRROR, PACKAGES, CONFIGURE])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def image_tag() -> str:
    return f"watchme-testhost:{recipe_hash()}"


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def build_image() -> str:
    """Build the base image once per machine (cached by the recipe's hash)."""
    ensure_docker()
    tag = image_tag()
    if image_exists(tag):
        return tag
    if not shutil.which("debootstrap"):
        sys.exit("[testhost] debootstrap is missing: install it (make deps does)")
    log(f"building {tag} with debootstrap (once per machine, a few minutes)")
    with tempfile.TemporaryDirectory(prefix="watchme-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
             SUITE, str(rootfs), MIRROR], stdout=subprocess.DEVNULL)
        script = CONFIGURE.replace("{mirror}", MIRROR).replace("{suite}", SUITE)
        run(["chroot", str(rootfs), "/bin/sh", "-c", script])
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        run(["docker", "import", "--change", 'CMD ["/lib/systemd/systemd"]', "-", tag],
            stdin=tar.stdout,
            stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise RuntimeError("tar of the rootfs failed")
    return tag


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap() -> None:
    """Remove test hosts whose owning process is gone (a crashed or killed test run)."""
    out = run(["docker", "ps", "-a", "--filter", f"label={LABEL}",
               "--format", '{{.Names}} {{.Label "watchme.owner"}}'], capture_output=True).stdout
    for line in out.split("\n"):
        if not line.strip():
            continue
        name, _, owner = line.partition(" ")
        if owner.isdigit() and not _pid_alive(int(owner)):
            log(f"removing {name}, left by a run that ended (pid {owner})")
            subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)
            _keep_debs(name)


def _wait_for(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise TimeoutError(f"test host: {what} not ready after {timeout}s")


def _ssh_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def start(image: str | None = None, local: bool = False, apt_cache: bool = True,
          keep: bool = False, boot_timeout: float = 60) -> TestHost:
    """Start a fresh host; SSH is published on a free 127.0.0.1 port chosen by Docker.

    image: another image started with the same flags (e.g. a cached production replica).
    keep: never reaped (removed only by `stop NAME`), for hosts an operator starts by hand.
    boot_timeout: seconds for sshd to come up (an image that starts many services boots slower).
    """
    ensure_docker()
    image = image or build_image()
    if not local:
        reap()
    name = ("watchme-local" if local else f"watchme-test-{uuid.uuid4().hex[:8]}")
    subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)
    # The local host is kept for the operator; a test's host dies with its test run.
    owner = "local" if local or keep else str(os.getpid())
    flags = list(RUN_FLAGS)
    if apt_cache:
        # Share downloaded .deb files between hosts: each host still installs everything
        # itself, it just does not fetch the same packages again. Each host gets its own
        # directory (hard links into the shared one) so parallel hosts never share apt's lock.
        shared = CACHE_DIR / "apt-archives"
        mine = CACHE_DIR / "apt-hosts" / name
        shutil.rmtree(mine, ignore_errors=True)
        (mine / "partial").mkdir(parents=True)
        shared.mkdir(parents=True, exist_ok=True)
        for deb in shared.glob("*.deb"):
            os.link(deb, mine / deb.name)
        flags += ["-v", f"{mine}:/var/cache/apt/archives"]
    run(["docker", "run", "-d", "--name", name, "--hostname", "watchme-testhost",
         "--label", f"{LABEL}=1", "--label", f"watchme.owner={owner}", *flags,
         "-p", "127.0.0.1::22", image], capture_output=True)
    port = int(run(["docker", "port", name, "22/tcp"], capture_output=True)
               .stdout.split("\n")[0].rsplit(":", 1)[1])

    def sshd_up() -> bool:
        r = subprocess.run(["docker", "exec", name, "systemctl", "is-active", "ssh"],
                           capture_output=True, text=True)
        return r.stdout.strip() == "active"

    _wait_for(sshd_up, "sshd", boot_timeout)
    _wait_for(lambda: _ssh_banner(port), "ssh port", max(30, boot_timeout))

    hdir = STATE_DIR / name
    shutil.rmtree(hdir, ignore_errors=True)
    hdir.mkdir(parents=True)
    key = hdir / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)])
    pub = key.with_suffix(".pub").read_text()
    run(["docker", "exec", "-i", name, "sh", "-c",
         "cat > /home/ubuntu/.ssh/authorized_keys && chown ubuntu: /home/ubuntu/.ssh/authorized_keys"
         " && chmod 600 /home/ubuntu/.ssh/authorized_keys"], input=pub)
    hostkey = run(["docker", "exec", name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub"],
                  capture_output=True).stdout.split()
    known = hdir / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {hostkey[0]} {hostkey[1]}\n")
    host = TestHost(name=name, port=port, user="ubuntu", key=str(key), known_hosts=str(known))
    (hdir / "ssh_config").write_text(
        f"Host {name}\n  HostName 127.0.0.1\n  Port {port}\n  User ubuntu\n"
        f"  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n"
        "  StrictHostKeyChecking yes\n  BatchMode yes\n")
    (hdir / "host.json").write_text(json.dumps(asdict(host), indent=2))
    if local:
        (STATE_DIR / "current.json").write_text(json.dumps(asdict(host), indent=2))
    return host


def _keep_debs(name: str) -> None:
    """Hand the packages a host downloaded back to the shared cache."""
    mine = CACHE_DIR / "apt-hosts" / name
    shared = CACHE_DIR / "apt-archives"
    for deb in mine.glob("*.deb"):
        if not (shared / deb.name).exists():
            try:
                os.link(deb, shared / deb.name)
            except OSError:
                pass
    shutil.rmtree(mine, ignore_errors=True)


def stop(name: str) -> None:
    subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)
    _keep_debs(name)
    shutil.rmtree(STATE_DIR / name, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m watchme.testhost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the image if its recipe changed")
    s = sub.add_parser("start", help="start a fresh host and print its state")
    s.add_argument("--local", action="store_true", help="the operator's local host (kept)")
    st = sub.add_parser("stop", help="remove a host")
    st.add_argument("name")
    sub.add_parser("reap", help="remove hosts left behind by crashed runs")
    sub.add_parser("ssh", help="print the SSH command for the local host")
    args = p.parse_args(argv)
    if args.cmd == "build":
        print(build_image())
    elif args.cmd == "start":
        print(json.dumps(asdict(start(local=args.local)), indent=2))
    elif args.cmd == "stop":
        stop(args.name)
    elif args.cmd == "ssh":
        host = TestHost(**json.loads((STATE_DIR / "current.json").read_text()))
        print(host.ssh_command)
    elif args.cmd == "reap":
        ensure_docker()
        reap()
    return 0


if __name__ == "__main__":
    sys.exit(main())
