"""A rollout's candidate container: the new image started beside the live one, probed
directly, and only then given the route (watchme/rollout.py, issue 12 §2).

The candidate is the service's own compose definition (env_file, volumes, command, init: all
read by compose itself, no .env value ever on a command line) started with `compose run` in a
project of its own (`watchme-candidate-<service>`): the live project's `down`, which the
unit's restart runs, removes one-off containers of its own project, never of another. Its
override is the service's override (watchme/images.py) with a candidate name, an explicit
address from the network's dynamic range instead of the fixed IP, no restart policy (an image
that exits stays exited: rejected) and the label LABEL. The label is how a leftover of a
killed rollout is found: the next rollout removes it first, the next deploy after its Nginx
site (tasks/candidates.py).

Pure functions here are unit-tested; the few remote steps take a Remote (watchme/rollout.py).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex

import yaml
from pyinfra import host
from pyinfra.api import FactBase, operation

from watchme import images
from watchme.fact_batch import Call

LABEL = "watchme.rollout-candidate"  # value: the service's registry name
COMPOSE = ('if docker compose version >/dev/null 2>&1; then c="docker compose"; '
           "else c=docker-compose; fi; ")


def name(service) -> str:
    return f"{service.container}-candidate"


def project(service) -> str:
    """The candidate's compose project: never the live one (whose `down` would remove it)."""
    return f"watchme-candidate-{service.name}"


def override_path(state_dir: str, service) -> str:
    return f"{state_dir}/rollout/{service.name}.candidate.yml"


# --- pure parts ---------------------------------------------------------------------------------

def choose_address(dynamic: ipaddress.IPv4Network, used,
                   reserved=()) -> ipaddress.IPv4Address | None:
    """A free address of the network's dynamic range, from its top (Docker's own allocator
    hands out the bottom of the subnet first); never one in use or reserved (the gateway,
    registry IPs). None when the range is full."""
    taken = {ipaddress.IPv4Address(str(a).split("/")[0]) for a in [*used, *reserved] if a}
    for address in reversed(list(dynamic.hosts())):
        if address not in taken:
            return address
    return None


def used_addresses(network_inspect: str) -> set[str]:
    """The addresses of every container on the network (`docker network inspect` JSON)."""
    try:
        doc = json.loads(network_inspect)
    except ValueError:
        return set()
    doc = doc[0] if isinstance(doc, list) and doc else doc
    containers = (doc or {}).get("Containers") or {}
    return {c.get("IPv4Address", "").split("/")[0] for c in containers.values()
            if c.get("IPv4Address")}


def available_mib(meminfo: str) -> int | None:
    """MemAvailable of /proc/meminfo in MiB; None when absent."""
    m = re.search(r"^MemAvailable:\s+(\d+)\s+kB", meminfo, re.M)
    return int(m.group(1)) // 1024 if m else None


def room_for_second_copy(available: int | None, limit_mib: int, reserve_mib: int) -> str:
    """'' when the host can run a second copy of the service (its memory limit) and still keep
    the OS reserve; else why not, for the JSON's `reason`."""
    if available is None:
        return "MemAvailable unreadable on the host"
    need = limit_mib + reserve_mib
    if available < need:
        return (f"MemAvailable {available} MiB < {need} MiB (memory_limit {limit_mib} MiB + "
                f"memory_os_reserve_mib {reserve_mib} MiB) for a second copy")
    return ""


def in_place_reason(*, front: bool, overlay: bool, running: bool, container: str,
                    has_image: bool, site_is_render: bool, address, dynamic, room: str) -> str:
    """'' when a candidate can carry the route; else why the rollout restarts in place (the
    JSON's `reason`). room: room_for_second_copy's answer."""
    if not front:
        return "the service runs on another host than Nginx (the front)"
    if overlay:
        return "watchme-network is an overlay: Nginx cannot reach a container address on it"
    if not running:
        return f"{container} is not running: there is no live container to keep serving"
    if not has_image:
        return "the compose file names no image"
    if not site_is_render:
        return "the live Nginx site is not the registry's render (run the deploy first)"
    if address is None:
        return f"no free address in the dynamic range {dynamic}"
    return room


def container_port(inspect: dict | None, host_port: int) -> int:
    """The container port that the host's published host_port (the registry's `port`) maps
    to, read from the live container; host_port itself when not published (same port)."""
    bindings = ((inspect or {}).get("HostConfig") or {}).get("PortBindings") or {}
    for key, binds in bindings.items():
        if any(str(b.get("HostPort")) == str(host_port) for b in binds or []):
            return int(key.split("/")[0])
    return host_port


def shared_volumes(compose_text: str, live_project: str | None) -> dict[str, str]:
    """{volume key: the live project's volume name} for the compose file's own named volumes,
    so the candidate (another project) mounts the live data, not a new empty volume."""
    try:
        doc = yaml.safe_load(compose_text) or {}
    except yaml.YAMLError:
        return {}
    vols = doc.get("volumes") if isinstance(doc, dict) else None
    if not live_project or not isinstance(vols, dict):
        return {}
    out = {}
    for key, spec in vols.items():
        spec = spec if isinstance(spec, dict) else {}
        if spec.get("external") or spec.get("name"):
            continue  # already a fixed name: the same in every project
        out[str(key)] = f"{live_project}_{key}"
    return out


def render_override(service, target: dict, compose_file: str, image: str,
                    address, volumes: dict[str, str] | None = None) -> str:
    """The candidate's override: the service's own override (images.render_override) with the
    candidate's name and address instead of the fixed IP, the label, no restart policy."""
    copy = service.model_copy(update={"ip": ipaddress.IPv4Address(str(address)),
                                      "container": name(service)})
    doc = yaml.safe_load(images.render_override(copy, target, compose_file, image))
    svc = doc["services"][target["key"]]
    svc["labels"] = {LABEL: service.name}
    svc["restart"] = "no"
    if volumes:
        doc["volumes"] = {k: {"external": True, "name": v} for k, v in sorted(volumes.items())}
    head = (f"# watchme rollout: candidate of {service.name} (watchme/candidate.py); removed "
            "with the candidate.\n")
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def run_command(service, key: str, compose_file: str, override: str) -> str:
    """`compose run` of the service's definition in the candidate's project, detached, no
    dependencies, no published ports (run publishes none), named as name(service)."""
    files = f"-f {shlex.quote(compose_file)} -f {shlex.quote(override)}"
    return (COMPOSE + f"$c -p {shlex.quote(project(service))} {files} run -d -T --no-deps "
            f"--name {shlex.quote(name(service))} {shlex.quote(key)}")


def remove_command(names) -> str:
    return "docker rm -f " + " ".join(shlex.quote(n) for n in names) + " >/dev/null"


LIST = ("ids=$(docker ps -aq --filter label=" + LABEL + " 2>/dev/null); "
        '[ -z "$ids" ] || docker inspect -f '
        "'{{.Name}} {{index .Config.Labels \"" + LABEL + "\"}}"
        "{{range .NetworkSettings.Networks}} {{.IPAddress}}{{end}}' $ids")


def parse_list(lines) -> dict[str, dict]:
    """{container name: {"service": ..., "addresses": [...]}} of LIST's output."""
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0].lstrip("/")] = {"service": parts[1],
                                         "addresses": [a for a in parts[2:] if a]}
    return out


class Candidates(FactBase):
    """Rollout candidates on the host (by LABEL), {name: {service, addresses}}; a leftover of a
    killed rollout when no rollout holds the deploy lock."""

    def call(self, script: str = "") -> Call:
        # Through the Engine API (files/docker_api.py, one python3 with the other Docker
        # facts); the CLI only before the deploy installed the scripts.
        return Call(script=script or f"{host.data.config_root}/scripts/docker_api.py",
                    argv=["labelled", LABEL], fallback=LIST)

    def command(self, script: str = "") -> str:
        return self.call(script).command()

    def process(self, output):
        return parse_list(output)


def state(inspect: dict | None) -> str:
    """'' while the candidate runs and never restarted; else why it is rejected."""
    if not inspect:
        return "the candidate container is gone"
    s = inspect.get("State") or {}
    if not s.get("Running") or inspect.get("RestartCount"):
        return (f"the candidate exited (exit code {s.get('ExitCode')}"
                + (f", {s.get('Error')}" if s.get("Error") else "") + ")")
    return ""


@operation()
def remove_leftovers():
    """Remove every rollout candidate on the host. The deploy calls it after its Nginx site is
    applied (tasks/candidates.py), when no route can lead to a candidate any more: a killed
    rollout's leftover is found by its label alone."""
    found = host.get_fact(Candidates)
    if not found:
        host.noop("no rollout candidate container")
        return
    yield remove_command(sorted(found))
