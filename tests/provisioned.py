"""A test-host image with the deploy's packages already installed, for the e2e modules that
do not test the installation itself (`pytestmark = [..., pytest.mark.provisioned]`).

Each module gets a fresh host either way; this only saves every module the same apt run
(nginx, the Docker engine, compose, certbot: minutes per module on a loaded 2-core CI
machine). The modules that prove the bootstrap (test_bootstrap, test_bootstrap_variants,
test_workflows' bare-host preview, ...) keep the bare image.

Built once per machine with `docker commit`, tagged by a hash of the base image and this
recipe, under a file lock so parallel test workers build it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import subprocess

from watchme import testhost as th

PACKAGES = ["nginx", "docker.io", "docker-compose", "curl", "openssl", "certbot", "busybox-static"]
INSTALL = ("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
           "--no-install-recommends " + " ".join(PACKAGES) + " >/dev/null")
# Committed clean: engine stopped and empty (it comes back with the container), no host or
# login keys (th.start makes fresh ones), no apt lists.
CLEAN = ("systemctl stop docker.service docker.socket containerd.service && "
         "rm -rf /var/lib/docker /var/lib/containerd /etc/ssh/ssh_host_* "
         "/home/ubuntu/.ssh/authorized_keys /var/lib/apt/lists/*")


def image() -> str:
    base = th.build_image()
    digest = hashlib.sha256("\n".join([base, INSTALL, CLEAN]).encode()).hexdigest()[:12]
    tag = f"watchme-testhost-provisioned:{digest}"
    if th.image_exists(tag):
        return tag
    th.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(th.CACHE_DIR / "provisioned.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if th.image_exists(tag):  # another worker built it while we waited
            return tag
        builder = th.start(image=base)
        try:
            for script in (INSTALL, CLEAN):
                p = subprocess.run(["docker", "exec", builder.name, "sh", "-c", script],
                                   capture_output=True, text=True, timeout=1800)
                if p.returncode != 0:
                    raise RuntimeError(f"provisioned image: {script[:60]}... failed: "
                                       f"{p.stderr[-2000:]}")
            subprocess.run(["docker", "commit", "-m", f"watchme provisioned {digest}",
                            builder.name, tag], check=True, capture_output=True)
        finally:
            th.stop(builder.name)
    return tag
