"""What the bootstrap installs: only what is missing in every form, in one apt run.

A server set up by hand may already run Docker's own `docker-ce` + `containerd.io`, a snap,
a standalone compose binary, nginx.org's Nginx or certbot from a snap. Installing Debian's
package over any of them either fails on conflicts or replaces it (a new engine restarts
every container), so each piece is detected from the host profile first
(watchme/host_profile.py) and a package is installed only where none is found:

    piece          found as (kept)                                   else installs
    Docker engine  docker-ce/docker.io/... package, snap, dockerd    docker.io
    compose        `docker compose` plugin, docker-compose on PATH   first of compose_candidates
    Nginx          any nginx on PATH (layout read from nginx.conf)   nginx
    certbot        package, snap, certbot on PATH                    certbot
    ECR helper     docker-credential-ecr-login on PATH               amazon-ecr-credential-helper,
                                                                     skipped if apt has none
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from watchme import kv

ENGINE_PACKAGES = ("docker-ce", "docker-ee", "docker.io", "docker-engine", "moby-engine")
ENGINE = "docker.io"
NGINX = "nginx"
CERTBOT = "certbot"
ECR_HELPER = "amazon-ecr-credential-helper"
# Installed from packages, these land here.
DOCKER_CLI = "/usr/bin/docker"
ECR_LOGIN = "/usr/bin/docker-credential-ecr-login"
CERTBOT_CLI = "/usr/bin/certbot"


class PackageError(Exception):
    """Something the deploy needs is neither on the host nor in apt's lists."""


@dataclass
class Software:
    """What is there (in which form) and which package names are still missing."""

    engine: str  # how the engine is there: a package name, "snap", "/path/dockerd", or ""
    docker: str  # the docker CLI the units call (its path once installed)
    docker_unit: str | None  # the systemd unit that runs dockerd (None: none to manage)
    compose: str  # the compose command found, with its real path, or ""
    nginx: str  # path of nginx, or ""
    nginx_layout: str  # "sites" (Debian: sites-enabled/) or "conf.d" (nginx.org's package)
    nginx_unit: str | None
    certbot: str  # how certbot is there: a path, or ""
    # The timer that renews certificates, when certbot is Debian's package (there, or installed
    # now: it ships certbot.timer). A snap renews with snapd's own timer, another certbot on
    # PATH with whatever its installer set up: neither is ours to enable.
    certbot_timer: str | None
    ecr_helper: str  # path of docker-credential-ecr-login, or ""
    missing: list[str] = field(default_factory=list)  # required packages to install
    compose_missing: bool = False  # pick the first of compose_candidates apt offers
    ecr_missing: bool = False  # optional: installed when apt has it, else warn and skip

    def apt_names(self, compose_candidates: list[str]) -> list[str]:
        """The package names whose apt candidates the plan needs (empty: nothing to install)."""
        names = list(self.missing)
        if self.compose_missing:
            names += [c for c in compose_candidates if c not in names]
        if self.ecr_missing:
            names.append(ECR_HELPER)
        return names


def nginx_layout(profile: dict) -> str:
    includes = profile["nginx_includes"]
    if "sites" in includes or not profile["paths"].get("nginx"):
        return "sites"  # Debian's layout, also what installing Debian's package gives
    if "confd" in includes:
        return "conf.d"
    raise PackageError(
        "/etc/nginx/nginx.conf includes neither sites-enabled/ nor conf.d/*.conf; fix: add "
        "`include /etc/nginx/conf.d/*.conf;` to its http block (nginx.org's default)")


def _engine(profile: dict) -> str:
    installed = profile["packages"]
    for name in ENGINE_PACKAGES:
        if name in installed:
            return name
    if "docker" in profile["snaps"]:
        return "snap"
    return profile["paths"].get("dockerd", "")


def _unit(profile: dict, candidates: list[str], installing: bool) -> str | None:
    for unit in candidates:
        if unit in profile["units"]:
            return unit
    return candidates[0] if installing else None


def detect(profile: dict, plain_packages: list[str]) -> Software:
    """Read the profile; plain_packages (e.g. curl) are installed when dpkg lacks them."""
    paths, installed = profile["paths"], profile["packages"]
    missing = []
    engine = _engine(profile)
    if not engine:
        missing.append(ENGINE)
    docker = paths.get("docker") or DOCKER_CLI
    nginx = paths.get("nginx", "")
    if not nginx and NGINX not in installed:
        missing.append(NGINX)
    if profile["compose_plugin"]:
        compose = f"{docker} compose"
    else:
        compose = paths.get("docker-compose", "")
    certbot = paths.get("certbot", "")  # /snap/bin is on the profile's PATH
    if not certbot and CERTBOT in installed:
        certbot = CERTBOT_CLI
    if not certbot:
        missing.append(CERTBOT)
    ecr = paths.get("docker-credential-ecr-login", "")
    handled = {ENGINE, NGINX, CERTBOT, ECR_HELPER, *ENGINE_PACKAGES}
    missing += [p for p in plain_packages
                if p not in handled and p not in installed and p not in missing]
    docker_units = ["snap.docker.dockerd.service"] if engine == "snap" else ["docker.service"]
    return Software(
        engine=engine, docker=docker,
        docker_unit=_unit(profile, docker_units, installing=not engine),
        compose=compose, nginx=nginx, nginx_layout=nginx_layout(profile),
        nginx_unit=_unit(profile, ["nginx.service"], installing=not nginx),
        certbot=certbot,
        certbot_timer="certbot.timer" if CERTBOT in installed or CERTBOT in missing else None,
        ecr_helper=ecr, missing=missing,
        compose_missing=not compose, ecr_missing=not ecr and ECR_HELPER not in installed)


def _compose_command(package: str, version: str, docker: str) -> str:
    # Debian's `docker-compose` is v1 (its own binary) up to bookworm and v2 (a plugin) from
    # trixie on; the -v2 / -plugin packages are always the plugin.
    upstream = version.split(":")[-1]
    if package == "docker-compose" and upstream.startswith("1."):
        return "/usr/bin/docker-compose"
    return f"{docker} compose"


@dataclass
class Plan:
    install: list[str]  # one apt-get install, in this order
    compose_command: str
    ecr_helper: str  # path of the ECR credential helper after the install, or "" (skipped)
    warnings: list[str]


def plan(sw: Software, compose_candidates: list[str], apt: dict[str, str]) -> Plan:
    """The one install; apt: package -> candidate version from apt's lists (AptCandidates)."""
    unavailable = [p for p in sw.missing if p not in apt]
    if unavailable:
        raise PackageError(f"{', '.join(unavailable)}: not in apt's package lists; fix: check "
                           "the host's apt sources (/etc/apt/sources.list)")
    # Nginx, the engine, the plain packages, compose, certbot, the ECR helper: one apt run.
    first = [p for p in (NGINX, ENGINE) if p in sw.missing]
    install = first + [p for p in sw.missing if p not in (NGINX, ENGINE, CERTBOT)]
    warnings = []
    compose = sw.compose
    if sw.compose_missing:
        choice = next((c for c in compose_candidates if c in apt), None)
        if choice is None:
            raise PackageError(f"no compose found (`docker compose`, docker-compose on PATH) and "
                               f"none of {', '.join(compose_candidates)} in apt's lists; fix: "
                               "install one, or set compose_candidates to a package apt offers")
        install.append(choice)
        compose = _compose_command(choice, apt[choice], sw.docker)
    if CERTBOT in sw.missing:
        install.append(CERTBOT)
    ecr = sw.ecr_helper or ("" if sw.ecr_missing else ECR_LOGIN)
    if sw.ecr_missing:
        if ECR_HELPER in apt:
            install.append(ECR_HELPER)
            ecr = ECR_LOGIN
        else:
            warnings.append(f"{ECR_HELPER} is not in this release's apt lists and "
                            "docker-credential-ecr-login is not on PATH: skipped")
    return Plan(install=install, compose_command=compose, ecr_helper=ecr, warnings=warnings)


def summary(sw: Software, p: Plan) -> str:
    """One line: what was found and kept, what is installed."""
    kept = []
    if sw.engine:
        kept.append(f"engine {sw.engine}")
    if not sw.compose_missing:
        kept.append(f"compose {sw.compose}")
    if sw.nginx:
        kept.append(f"nginx {sw.nginx} ({sw.nginx_layout})")
    if sw.certbot:
        kept.append(f"certbot {sw.certbot}")
    if sw.ecr_helper:
        kept.append(f"ecr helper {sw.ecr_helper}")
    found = f"found {', '.join(kept)}" if kept else "found nothing to keep"
    todo = f"install {', '.join(p.install)}" if p.install else "nothing to install"
    return f"bootstrap: {found}; {todo}"


# `apt-cache policy` output -> candidate.<package>=<version>, for packages that have one.
POLICY_AWK = ("awk '/^[^ ]/ {p = $1; sub(/:$/, \"\", p)} "
              "$1 == \"Candidate:\" && $2 != \"(none)\" {print \"candidate.\" p \"=\" $2}'")


class AptCandidates(FactBase):
    """{"candidates": {package: version apt would install}, "refreshed": bool}.

    Read only when something must be installed; names apt does not offer are absent. A
    brand-new host has empty lists and nothing can be chosen from them, so in that one case
    this refreshes them first (it installs nothing) and says so, so that the install does
    not refresh them a second time.
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "apt-cache"

    def command(self, names: list[str]) -> str:
        quoted = " ".join(shlex.quote(n) for n in names)
        return (
            "ls /var/lib/apt/lists/ 2>/dev/null | grep -q '_Packages$' || "
            "{ apt-get update -qq >/dev/null 2>&1 && echo refreshed=yes; }; "
            f"apt-cache policy {quoted} 2>/dev/null | {POLICY_AWK}"
        )

    def default(self):  # no output at all: apt offers none of them
        return {"candidates": {}, "refreshed": False}

    def process(self, output):
        raw = kv.parse(output)
        return {"candidates": {k[len("candidate."):]: v for k, v in raw.items()
                               if k.startswith("candidate.")},
                "refreshed": raw.get("refreshed") == "yes"}
