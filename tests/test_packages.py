"""watchme/packages.py and the host profile's parsing: what is kept, what one apt run installs.

Cases as data: a host profile (as files/host-profile.sh reports it) in, decisions out.
tests/test_bootstrap_variants.py proves the same on real hosts carrying each variant.
"""

from __future__ import annotations

import subprocess

import pytest

from watchme import host_profile
from watchme.packages import POLICY_AWK, AptCandidates, PackageError, detect, plan, summary

CANDIDATES = ["docker-compose-v2", "docker-compose-plugin", "docker-compose"]
BOOKWORM = {"nginx": "1.22.1-9", "docker.io": "20.10.24", "docker-compose": "1.29.2-3",
            "curl": "7.88.1", "certbot": "2.1.0-4", "amazon-ecr-credential-helper": "0.6.0-1+b2"}

BARE = """id=debian
user=ubuntu
groups=ubuntu sudo
sudo=ok
virt=none
mem_kib=2000000
compose_plugin=
pkg.dpkg=1.21.22
"""


def profile(*lines: str) -> dict:
    return host_profile.parse((BARE + "\n".join(lines)).splitlines())


def decide(p: dict, apt: dict | None = None, plain=("curl",)):
    sw = detect(p, list(plain))
    return sw, plan(sw, CANDIDATES, BOOKWORM if apt is None else apt)


def test_bare_bookworm_installs_everything_in_one_run():
    sw, p = decide(profile())
    assert p.install == ["nginx", "docker.io", "curl", "docker-compose", "certbot",
                         "amazon-ecr-credential-helper"]
    assert sw.apt_names(CANDIDATES) == ["docker.io", "nginx", "certbot", "curl", *CANDIDATES,
                                        "amazon-ecr-credential-helper"]
    assert p.compose_command == "/usr/bin/docker-compose"  # bookworm's compose is v1
    assert (sw.nginx_layout, sw.docker_unit, sw.nginx_unit) == ("sites", "docker.service",
                                                                "nginx.service")
    assert p.ecr_helper == "/usr/bin/docker-credential-ecr-login" and not p.warnings
    assert sw.certbot_timer == "certbot.timer"  # the package installed now ships it


CONVERGED = ("pkg.docker.io=20.10.24", "pkg.nginx=1.22.1-9", "pkg.curl=7.88.1",
             "pkg.certbot=2.1.0-4", "pkg.docker-compose=1.29.2-3",
             "pkg.amazon-ecr-credential-helper=0.6.0-1+b2",
             "path.docker=/usr/bin/docker", "path.dockerd=/usr/sbin/dockerd",
             "path.docker-compose=/usr/bin/docker-compose", "path.nginx=/usr/sbin/nginx",
             "path.certbot=/usr/bin/certbot",
             "path.docker-credential-ecr-login=/usr/bin/docker-credential-ecr-login",
             "nginx.sites=yes", "nginx.confd=yes",
             "unit.docker.service=enabled", "unit.nginx.service=enabled")


def test_converged_host_needs_no_apt_at_all():
    sw = detect(profile(*CONVERGED), ["curl"])
    assert sw.apt_names(CANDIDATES) == []  # so AptCandidates is never read on a no-op
    p = plan(sw, CANDIDATES, {})
    assert p.install == [] and p.compose_command == "/usr/bin/docker-compose"
    assert summary(sw, p).endswith("; nothing to install")
    assert sw.certbot_timer == "certbot.timer"


# A hand-built server: Docker's own packages, a standalone compose, nginx.org's Nginx,
# certbot from a snap, the ECR helper unavailable in apt.
HAND_BUILT = ("pkg.docker-ce=5:27.3.1-1~debian.12~bookworm", "pkg.containerd.io=1.7.22-1",
              "pkg.nginx=1.26.0-1~bookworm", "pkg.curl=7.88.1",
              "path.docker=/usr/bin/docker", "path.dockerd=/usr/bin/dockerd",
              "path.docker-compose=/usr/local/bin/docker-compose", "path.nginx=/usr/sbin/nginx",
              "path.certbot=/snap/bin/certbot", "nginx.confd=yes",
              "unit.docker.service=enabled", "unit.nginx.service=enabled")


def test_hand_built_server_is_kept_as_it_is():
    sw, p = decide(profile(*HAND_BUILT), apt={"curl": "7.88.1"})
    assert sw.engine == "docker-ce"
    assert p.install == []
    assert p.compose_command == "/usr/local/bin/docker-compose"
    assert sw.nginx_layout == "conf.d"
    assert sw.certbot == "/snap/bin/certbot"
    assert sw.certbot_timer is None  # snapd renews a snap's certificates with its own timer
    assert p.ecr_helper == ""
    assert p.warnings == ["amazon-ecr-credential-helper is not in this release's apt lists and "
                          "docker-credential-ecr-login is not on PATH: skipped"]


def test_compose_plugin_is_preferred_and_called_through_the_real_docker_path():
    sw, p = decide(profile(*HAND_BUILT, "compose_plugin=2.29.7", "path.docker=/snap/bin/docker"))
    assert p.compose_command == "/snap/bin/docker compose"
    assert "docker-compose-v2" not in p.install


@pytest.mark.parametrize("lines, engine, unit", [
    (["pkg.docker.io=20.10.24", "unit.docker.service=enabled"], "docker.io", "docker.service"),
    (["pkg.docker-ce=5:27", "unit.docker.service=enabled"], "docker-ce", "docker.service"),
    (["snap.docker=yes", "path.docker=/snap/bin/docker",
      "unit.snap.docker.dockerd.service=enabled"], "snap", "snap.docker.dockerd.service"),
    (["path.dockerd=/opt/bin/dockerd"], "/opt/bin/dockerd", None),  # no unit: not managed
])
def test_an_engine_in_any_form_is_never_replaced(lines, engine, unit):
    sw, p = decide(profile(*lines))
    assert sw.engine == engine and sw.docker_unit == unit
    assert "docker.io" not in p.install


def test_certbot_and_ecr_helper_in_another_form_are_not_installed():
    sw, p = decide(profile("path.certbot=/usr/local/bin/certbot",
                           "path.docker-credential-ecr-login=/usr/local/bin/docker-credential-ecr-login"))
    assert "certbot" not in p.install and "amazon-ecr-credential-helper" not in p.install
    assert sw.certbot_timer is None
    assert p.ecr_helper == "/usr/local/bin/docker-credential-ecr-login"


def test_old_default_bootstrap_packages_do_not_bypass_detection():
    """bootstrap_packages may still list nginx and docker.io: detection decides for them."""
    sw, p = decide(profile(*HAND_BUILT), apt={"curl": "7.88.1"},
                   plain=("nginx", "docker.io", "curl"))
    assert p.install == []


@pytest.mark.parametrize("candidate, command", [
    ("docker-compose-v2", "/usr/bin/docker compose"),
    ("docker-compose", "/usr/bin/docker compose"),  # trixie: docker-compose 2.x is the plugin
])
def test_compose_package_choice(candidate, command):
    apt = {**BOOKWORM, candidate: "2.26.1-4"}
    assert decide(profile(), apt=apt)[1].compose_command == command


def test_missing_required_package_is_a_clear_error():
    with pytest.raises(PackageError, match=r"^nginx, certbot: not in apt's package lists; fix"):
        decide(profile("pkg.docker.io=1"), apt={"curl": "1", "docker-compose": "1.29.2-3"})


def test_no_compose_anywhere_is_a_clear_error():
    apt = {k: v for k, v in BOOKWORM.items() if k != "docker-compose"}
    with pytest.raises(PackageError, match=r"no compose found .* fix: install one"):
        decide(profile(), apt=apt)


def test_nginx_without_either_include_is_refused():
    with pytest.raises(PackageError, match=r"includes neither sites-enabled/ nor conf.d/\*.conf"):
        decide(profile("path.nginx=/usr/sbin/nginx"))


def test_profile_parsing():
    p = profile("swap./swapfile=2097148", "swap./dev/zram0=1048576", "path.nginx=",
                "cgroup_mem=1073741824", "groups=ubuntu docker", "docker_group=yes")
    assert p["swaps"] == ["/swapfile 2097148", "/dev/zram0 1048576"]
    assert p["paths"] == {}  # empty: not found
    assert p["memory_bytes"] == 1073741824  # the cgroup limit is below MemTotal
    assert p["groups"] == ["ubuntu", "docker"] and p["docker_group"]
    assert p["packages"] == {"dpkg": "1.21.22"} and not p["container"]


def test_profile_script_runs_here():
    """The real script on this (Debian) machine: it must not fail and must parse."""
    cmd = host_profile.HostProfile().command("/nonexistent swap")
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True)
    p = host_profile.parse(out.stdout.splitlines())
    assert p["id"] and p["user"] and p["sudo"] in ("root", "ok", "no")
    assert "dpkg" in p["packages"] and p["swap_file_bytes"] == 0
    assert all(path.startswith("/") for path in p["paths"].values())


def test_apt_candidates_parsing():
    fact = AptCandidates()
    assert "apt-cache policy nginx 'weird name'" in fact.command(["nginx", "weird name"])
    out = fact.process(["refreshed=yes", "candidate.nginx=1.22.1-9"])
    assert out == {"candidates": {"nginx": "1.22.1-9"}, "refreshed": True}
    assert fact.default() == {"candidates": {}, "refreshed": False}  # pyinfra: no output


def test_apt_candidates_command_on_real_apt_output():
    """The awk part on apt-cache's real format, including a package with no candidate."""
    sample = ("amazon-ecr-credential-helper:\n  Installed: (none)\n  Candidate: (none)\n"
              "  Version table:\n"
              "nginx:\n  Installed: (none)\n  Candidate: 1.22.1-9\n  Version table:\n"
              "     1.22.1-9 500\n        500 http://deb.debian.org/debian bookworm/main\n")
    out = subprocess.run(["sh", "-c", POLICY_AWK], input=sample, capture_output=True, text=True,
                         check=True).stdout
    assert AptCandidates().process(out.splitlines())["candidates"] == {"nginx": "1.22.1-9"}
