"""Images: the ECR login through the credential helper, the per-service compose override,
image pins, and what a rollout reads (digests). Text in, text out: unit-tested without a host.

ECR without a token to expire: root's Docker client config gets
`"credHelpers": {"<ecr_registry>": "ecr-login"}`, so every pull (the units' `compose pull`,
`watchme rollout`, a hand-run `docker pull`) asks `docker-credential-ecr-login` for a
short-lived token minted from the instance role. Nothing secret is written: no `auths`, no key.
The helper takes the region from the registry's host name (`<account>.dkr.ecr.<region>.amazonaws.com`),
so neither the units nor the config need AWS_REGION; `ecr_region` must agree with that name
(checked before any host is touched) and is what files/pull_check.py passes as AWS_REGION.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jinja2
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER_CONFIG = "/root/.docker/config.json"  # the units and rollouts run docker as root
HELPER = "ecr-login"  # credHelpers value: docker runs docker-credential-ecr-login
HELPER_BINARY = "docker-credential-ecr-login"
PINS = "/var/lib/watchme/image-pins.json"  # {service: image ref} set by `watchme rollout`
ECR_HOST = re.compile(r"^(\d{12})\.dkr\.ecr(-fips)?\.([a-z]{2}(-gov)?-[a-z]+-\d)\.amazonaws\.com(\.cn)?$")


# --- ECR settings and root's Docker client config ---------------------------------------------

def check_settings(registry: str, region: str) -> list[str]:
    """Problems with ecr_registry / ecr_region, each naming the field and the fix."""
    m = ECR_HOST.match(registry or "")
    if not m:
        return [f"ecr_registry: {registry!r} is not an ECR registry host; use "
                "<account>.dkr.ecr.<region>.amazonaws.com (no scheme, no path)"]
    if m.group(3) != region:
        return [f"ecr_region: {region!r} differs from the region in ecr_registry "
                f"({m.group(3)}); set ecr_region = {m.group(3)!r}"]
    return []


# Runs on the host with python3 (the guard needs it too). Prints what the deploy must know
# and nothing secret: never the auths, only the credHelpers map, mode and owner.
READ_CONFIG = r"""
import json, os, sys
p = sys.argv[1]
out = {"exists": os.path.exists(p)}
if out["exists"]:
    st = os.stat(p)
    out.update(mode=oct(st.st_mode & 0o777)[2:], uid=st.st_uid, gid=st.st_gid)
    try:
        doc = json.load(open(p))
        out["valid"] = isinstance(doc, dict)
        out["credHelpers"] = doc.get("credHelpers", {}) if out["valid"] else {}
    except ValueError:
        out["valid"] = False
print(json.dumps(out))
"""

# Merge on the host, so another tool's keys (and any auths) never travel: only our key changes.
MERGE_CONFIG = r"""
import json, os, sys
p, registry, helper = sys.argv[1:4]
os.makedirs(os.path.dirname(p), mode=0o700, exist_ok=True)
try:
    doc = json.load(open(p))
except (OSError, ValueError):
    doc = {}
if not isinstance(doc, dict):
    doc = {}
doc.setdefault("credHelpers", {})[registry] = helper
tmp = p + ".watchme-new"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
os.chown(tmp, 0, 0)
os.chmod(tmp, 0o600)
os.replace(tmp, p)
"""


def read_config_command(path: str = DOCKER_CONFIG) -> str:
    return f"python3 -c {shlex.quote(READ_CONFIG)} {shlex.quote(path)}"


def merge_config_command(registry: str, path: str = DOCKER_CONFIG, helper: str = HELPER) -> str:
    return (f"python3 -c {shlex.quote(MERGE_CONFIG)} {shlex.quote(path)} "
            f"{shlex.quote(registry)} {shlex.quote(helper)}")


def config_ok(found: dict | None, registry: str, helper: str = HELPER) -> list[str]:
    """Why root's Docker config needs rewriting; [] when it is right."""
    if not found or not found.get("exists"):
        return ["missing"]
    why = []
    if not found.get("valid", False):
        why.append("not a JSON object (it is replaced; the old text is unreadable to Docker anyway)")
    elif (found.get("credHelpers") or {}).get(registry) != helper:
        why.append(f"credHelpers[{registry}] is {(found.get('credHelpers') or {}).get(registry)!r}")
    if found.get("mode") != "600" or found.get("uid") != 0 or found.get("gid") != 0:
        why.append(f"mode {found.get('mode')} owner {found.get('uid')}:{found.get('gid')}")
    return why


# --- the compose override ----------------------------------------------------------------------

class ComposeError(ValueError):
    pass


def compose_target(text: str, container: str, network: str) -> dict:
    """Which service of a compose file is the registry's, and how the file names the network.

    The service is the one whose container_name is the registry's container, else the only
    service. Returns {key, image, version, network_key, network_declared}.
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ComposeError(f"not valid YAML ({str(e).splitlines()[0]})") from e
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict) or not services:
        raise ComposeError("has no services: mapping")
    named = [k for k, v in services.items()
             if isinstance(v, dict) and v.get("container_name") == container]
    if len(named) == 1:
        key = named[0]
    elif len(services) == 1:
        key = next(iter(services))
    else:
        raise ComposeError(f"has {len(services)} services ({', '.join(map(str, services))}) and "
                           f"none with container_name: {container}; set container_name: "
                           f"{container} on the registry's service")
    nets = doc.get("networks") if isinstance(doc.get("networks"), dict) else {}
    network_key = next((str(k) for k, v in nets.items()
                        if k == network or (isinstance(v, dict) and v.get("name") == network)), None)
    version = doc.get("version")
    image = services[key].get("image") if isinstance(services[key], dict) else None
    return {"key": str(key), "image": image, "version": None if version is None else str(version),
            "network_key": network_key or network, "network_declared": network_key is not None}


def override_path(config_root: str, service: str) -> str:
    return f"{config_root}/compose/{service}.override.yml"


def render_override(service, target: dict, compose_file: str, image: str | None = None) -> str:
    """The override file's text for a registry service (deploy and rollout render the same)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True)
    ip = None if service.ip is None else str(service.ip)
    return env.get_template("compose-override.yml.j2").render(
        service=service.name, compose_file=compose_file, key=target["key"],
        version=target["version"], container=service.container, memory=service.memory_limit,
        image=image, ip=ip, network_key=target["network_key"],
        declare_network=ip is not None and not target["network_declared"])


def parse_pins(text: str) -> dict[str, str]:
    try:
        pins = json.loads(text or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in pins.items()} if isinstance(pins, dict) else {}


# --- image references and digests ------------------------------------------------------------

REF = re.compile(r"^[a-z0-9]([a-z0-9._:/@-]*[a-z0-9])?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")


def check_ref(ref: str) -> str:
    """An image reference safe to put in a YAML file and a command line."""
    if len(ref) > 400 or not REF.match(ref) or "//" in ref:
        raise ValueError(f"--image {ref!r}: not an image reference; use e.g. "
                         "127.0.0.1:5000/app:v2 or <account>.dkr.ecr.<region>.amazonaws.com/app@sha256:<64 hex>")
    return ref


def repository(ref: str) -> str:
    """`host:5000/app` of `host:5000/app:tag` or `host:5000/app@sha256:...`."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)
    if ":" in last[-1]:
        ref = ref.rsplit(":", 1)[0]
    return ref


def pin_for(config_image: str, image_id: str, repo_digests: list[str]) -> str:
    """What starts exactly this image again: `<repo>@sha256:...` of the running image when
    the registry knows it (it can be pulled back if pruned), else its local image ID."""
    repo = repository(config_image)
    for d in repo_digests or []:
        if d.split("@", 1)[0] == repo:
            return d
    return (repo_digests or [image_id])[0] if repo_digests else image_id
