"""ECR pulls without a token to expire (issue 12 §1; seed: "ECR認証エラー authorization token has expired").

The seed's fix for an expired token was a manual `aws ecr get-login-password | docker login`,
which writes a 12-hour token into root's Docker config. Instead, root's Docker client (the one
the units' `compose pull` and `watchme rollout` use) asks Debian/Ubuntu's
`amazon-ecr-credential-helper` for a fresh token on every pull, minted from the instance role.
The bootstrap installs the package; this task only configures the client (watchme/images.py
explains the region and why nothing secret is written).
"""

from __future__ import annotations

import json

from pyinfra import host, logger
from pyinfra.api import FactBase, operation
from pyinfra.api.exceptions import DeployError

from watchme import images
from watchme.fact_batch import Call

DEFAULT_REGISTRY = "754724220380.dkr.ecr.ap-southeast-2.amazonaws.com"
DEFAULT_REGION = "ap-southeast-2"


class DockerCredHelpers(FactBase):
    """Root's Docker client config without its secrets: exists, valid, credHelpers, mode, owner."""

    def call(self, path: str) -> Call:
        return Call(code=images.READ_CONFIG, argv=[path])

    def command(self, path: str) -> str:
        return self.call(path).command()

    def process(self, output):
        return json.loads("\n".join(output))


class CredentialHelperBinary(FactBase):
    """Path of docker-credential-ecr-login, or None."""

    def command(self) -> str:
        return f"command -v {images.HELPER_BINARY} || true"

    def process(self, output):
        return output[0].strip() if output and output[0].strip() else None


@operation()
def docker_cred_helper(registry: str, path: str = images.DOCKER_CONFIG, helper: str = images.HELPER):
    """credHelpers[registry] = helper in a Docker client config, root-owned 0600.

    Own operation because the file is shared JSON: stock files.put would replace another
    tool's keys (or a stray `auths` from a hand-run `docker login`), and reading the whole
    file into the deploy would copy those secrets off the host. The merge runs on the host.
    """
    why = images.config_ok(host.get_fact(DockerCredHelpers, path=path), registry, helper)
    if not why:
        host.noop(f"{path}: credHelpers[{registry}] = {helper}")
        return
    yield images.merge_config_command(registry, path, helper)


def apply() -> None:
    d = host.data
    registry = d.get("ecr_registry", DEFAULT_REGISTRY)
    region = d.get("ecr_region", DEFAULT_REGION)
    problems = images.check_settings(registry, region)
    if problems:
        raise DeployError(f"{host.name}: " + "; ".join(problems))
    if host.get_fact(CredentialHelperBinary) is None:
        logger.warning(f"{host.print_prefix}{images.HELPER_BINARY} is not installed: pulls from "
                       f"{registry} fail with 'executable file not found'; install "
                       "amazon-ecr-credential-helper (the bootstrap's packages)")
    docker_cred_helper(name=f"Docker pulls from {registry} through the ECR credential helper",
                       registry=registry)
