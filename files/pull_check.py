#!/usr/bin/env python3
"""Can this host pull a service's image? Pulls it and names the cause of a failure and its fix.

    pull_check.py [--json] [--registry HOST] [--region REGION] [--no-pull] IMAGE

Installed with the guard's scripts; `watchme doctor` runs it over SSH (as root, like the units).
Stdlib only. For an image on the ECR registry (--registry, the deploy's ecr_registry), the
credential helper is checked first (configured, installed, able to mint a token from the
instance role: `docker-credential-ecr-login get`, whose real error is only in its log), then
`docker pull`. Causes: helper_missing, no_credentials, unauthorized, not_found, network, unknown.
Exit codes: 0 the pull works, 1 it does not (cause printed), 3 could not check (no docker).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

HELPER = "docker-credential-ecr-login"
CONFIG = os.path.join(os.path.expanduser("~root"), ".docker", "config.json")
HELPER_LOG = os.path.join(os.path.expanduser("~root"), ".ecr", "log", "ecr-login.log")

FIXES = {
    "helper_missing": "install the credential helper: apt-get install amazon-ecr-credential-helper "
                      "(a `watchme deploy` installs it); root's Docker config names it in credHelpers",
    "not_configured": "run `watchme deploy`: it sets credHelpers[<registry>] = ecr-login in "
                      "/root/.docker/config.json (never `docker login` to ECR: that token expires "
                      "after 12 hours)",
    "no_credentials": "the instance has no usable IAM role: attach one with "
                      "AmazonEC2ContainerRegistryReadOnly (EC2 console > Actions > Security > "
                      "Modify IAM role) and check the instance metadata service is enabled",
    "unauthorized": "the registry refused the credentials: an old `docker login` token (the seed's "
                    "'authorization token has expired') or a role without ecr:GetAuthorizationToken/"
                    "ecr:BatchGetImage; keep only credHelpers for ECR (`watchme deploy`), remove "
                    "its auths entry (docker logout <registry>), and check the role's policy",
    "not_found": "the repository or tag does not exist: check the image in the compose file (or "
                 "--image) and that CI pushed that tag",
    "network": "the host cannot reach the registry: check DNS, outbound HTTPS (security group, "
               "NACL) and, for ECR, the NAT gateway or VPC endpoints",
    "unknown": "read the detail; retry `docker pull` by hand",
}

# (cause, substrings): first match wins, so the specific ones come first. Each string is from
# docker, compose or the ECR helper (its log), as tests/test_images.py shows.
RULES = [
    ("helper_missing", ['executable file not found', 'not installed or not available in PATH',
                        'docker-credential-ecr-login: not found',
                        'no such file or directory: docker-credential']),
    ("no_credentials", ['no EC2 IMDS role found', 'NoCredentialProviders',
                        'no valid providers in chain', 'failed to retrieve credentials',
                        'EC2RoleRequestError', 'credentials not found in native keychain']),
    ("unauthorized", ['authorization token has expired', 'no basic auth credentials',
                      'ExpiredToken', 'UnrecognizedClientException', 'AccessDeniedException',
                      'not authorized to perform', 'denied:', 'unauthorized', '401 Unauthorized']),
    ("not_found", ['manifest unknown', 'name unknown', 'RepositoryNotFoundException',
                   'does not exist in the registry', 'not found: manifest', 'repository does not exist',
                   'No such image']),
    ("network", ['dial tcp', 'connection refused', 'no such host', 'i/o timeout',
                 'TLS handshake timeout', 'network is unreachable', 'context deadline exceeded',
                 'Client.Timeout', 'connection reset by peer', 'Temporary failure in name resolution']),
]


def classify(text: str) -> str:
    low = text.lower()
    for cause, needles in RULES:
        if any(n.lower() in low for n in needles):
            return cause
    return "unknown"


def registry_of(image: str) -> str:
    first = image.split("/", 1)[0]
    return first if "/" in image and ("." in first or ":" in first or first == "localhost") else "docker.io"


def _run(cmd: list[str], stdin: str = "", env: dict | None = None, timeout: float = 300):
    try:
        p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        return p.returncode, (p.stdout + p.stderr).strip()
    except FileNotFoundError as e:
        return 127, str(e)
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(cmd)}: i/o timeout after {timeout:.0f} s"


def _helper_log_error() -> str:
    """The helper prints only 'credentials not found'; the cause is in its log's last error."""
    try:
        with open(HELPER_LOG) as f:
            lines = [l for l in f.read().splitlines()[-50:] if "level=error" in l]
        return lines[-1] if lines else ""
    except OSError:
        return ""


def check_helper(registry: str, region: str) -> dict | None:
    """None when the helper is configured and mints a token; else the failure."""
    try:
        with open(CONFIG) as f:
            helpers = (json.load(f) or {}).get("credHelpers") or {}
    except (OSError, ValueError, AttributeError):
        helpers = {}
    if helpers.get(registry) != "ecr-login":
        return {"step": "config", "cause": "not_configured",
                "detail": f"{CONFIG}: no credHelpers entry ecr-login for {registry}"}
    if shutil.which(HELPER) is None:
        return {"step": "helper", "cause": "helper_missing",
                "detail": f'exec: "{HELPER}": executable file not found in $PATH'}
    rc, out = _run([HELPER, "get"], stdin=registry, env={"AWS_REGION": region}, timeout=60)
    if rc == 0:
        return None
    detail = " | ".join(x for x in (out, _helper_log_error()) if x)
    return {"step": "helper", "cause": classify(detail), "detail": detail}


def check(image: str, registry: str = "", region: str = "", pull: bool = True) -> dict:
    result = {"image": image, "registry": registry_of(image), "ok": True, "cause": "", "fix": "",
              "step": "", "detail": ""}
    if registry and result["registry"] == registry:
        failed = check_helper(registry, region)
        if failed:
            result.update(ok=False, **failed)
    if result["ok"] and pull:
        rc, out = _run(["docker", "pull", "-q", image])
        if rc != 0:
            result.update(ok=False, step="pull", cause=classify(out), detail=out)
    if not result["ok"]:
        result["fix"] = FIXES[result["cause"]]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image")
    p.add_argument("--registry", default="", help="the ECR registry host (credential helper checked)")
    p.add_argument("--region", default="", help="AWS region for the helper (ecr_region)")
    p.add_argument("--no-pull", action="store_true", help="only check the credential helper")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if shutil.which("docker") is None:
        print(json.dumps({"image": a.image, "ok": False, "cause": "no_docker"}) if a.json
              else "pull check: docker is not installed")
        return 3
    r = check(a.image, a.registry, a.region, pull=not a.no_pull)
    if a.json:
        print(json.dumps(r))
    elif r["ok"]:
        print(f"{a.image}: pull ok")
    else:
        print(f"{a.image}: pull fails at {r['step']}: {r['cause']}\n  detail: {r['detail']}\n"
              f"  fix: {r['fix']}")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
