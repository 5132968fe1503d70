"""Docker Swarm for watchme-network across hosts (issue 14): the front host is the manager,
every other host joins it as a worker, and each host gets the anchor image.

Only the overlay needs the swarm: no service runs as a swarm service (compose and the units
stay as they are). The join token is read from the front's connection at the moment the
worker joins, inside one FunctionCommand: it is never a fact, never in a log (MaskString),
never written anywhere. pyinfra runs each operation on every host before the next, so the
front's `swarm init` is done before any worker's join.
"""

from __future__ import annotations

import shlex

from pyinfra import host, inventory, logger, state
from pyinfra.api import FactBase, FunctionCommand, StringCommand, operation
from pyinfra.api.command import MaskString
from pyinfra.api.exceptions import DeployError, OperationError
from pyinfra.facts.files import File
from pyinfra.operations import apt

from watchme import placement, remote

SWARM_PORT = 2377


class SwarmNode(FactBase):
    """{"state": inactive|active|pending|error|locked, "manager": bool, "cluster": id, "node": id}
    of the local engine; None when Docker does not answer."""

    def command(self) -> str:
        return ("docker info --format "
                "'{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.Cluster.ID}} "
                "{{.Swarm.NodeID}}' 2>/dev/null || true")

    def process(self, output):
        parts = " ".join(output).split()
        if not parts:
            return None
        return {"state": parts[0], "manager": parts[1:2] == ["true"],
                "cluster": parts[2] if len(parts) > 3 else "", "node": parts[-1] if len(parts) > 2 else ""}


class DockerImage(FactBase):
    """True when the local engine has this image."""

    def command(self, image: str) -> str:
        return f"docker image inspect {shlex.quote(image)} >/dev/null 2>&1 && echo yes || echo no"

    def process(self, output):
        return "yes" in output


@operation()
def swarm_init(advertise: str):
    """The front host is a swarm manager (docker swarm init, advertising its private address);
    pyinfra ships no swarm operation."""
    node = host.get_fact(SwarmNode)
    if node and node["state"] == "active" and node["manager"]:
        host.noop(f"swarm manager (cluster {node['cluster'][:12]})")
        return
    if node and node["state"] == "active":
        raise OperationError("this host is a worker of another swarm; fix: `docker swarm leave` "
                             "on it, or make the manager the first WATCHME_HOSTS entry")
    yield StringCommand("docker", "swarm", "init", "--advertise-addr", advertise)


@operation()
def swarm_join(front, front_address: str):
    """This host joins the front's swarm as a worker; the token is read from the front now."""
    node = host.get_fact(SwarmNode)
    if node and node["state"] == "active":
        host.noop("swarm worker" if not node["manager"] else "swarm manager")
        return

    def join(state, host):
        ok, out, err = remote.run(state, front, "docker swarm join-token -q worker", _sudo=True)
        token = out[0].strip() if ok and out else ""
        if not token:
            logger.error(f"{host.print_prefix}could not read the join token from {front.name}: "
                         f"{' '.join(err)[-300:]}")
            return False
        cmd = StringCommand("docker", "swarm", "join", "--token", MaskString(token),
                            f"{front_address}:{SWARM_PORT}")
        ok, out, err = remote.run(state, host, cmd)
        if not ok:
            logger.error(f"{host.print_prefix}docker swarm join {front_address}:{SWARM_PORT} "
                         f"failed: {' '.join(err)[-300:]} (security group: 2377/tcp, "
                         "7946/tcp+udp, 4789/udp between the hosts)")
        return ok

    yield FunctionCommand(join, (), {})


def apply() -> bool:
    """The swarm and the anchor image when watchme-network spans hosts; False when it does not."""
    if not placement.swarm(host, inventory):
        return False
    front = placement.front(inventory)
    if front in state.failed_hosts:
        raise DeployError(f"{host.name}: the front host {front.name} failed or is unreachable, "
                          "so this host cannot join its swarm; fix the front first")
    address = placement.private_address(front)
    if not address:
        raise DeployError(f"{front.name}: no private address (no default route); fix: give it "
                          f"with WATCHME_PRIVATE_ADDRESSES={placement.placement_name(front)}=ADDR")
    if placement.is_front(host):
        swarm_init(name=f"Docker swarm manager (advertise {address})", advertise=address)
    else:
        swarm_join(name=f"Join the swarm of {placement.placement_name(front)} ({address}:{SWARM_PORT})",
                   front=front, front_address=address)
    anchor_image()
    return True


def anchor_image() -> None:
    """A one-binary image (busybox-static, docker import) for the anchor container: no registry."""
    if not host.get_fact(File, path="/bin/busybox"):
        apt.packages(name="busybox-static (the anchor image's only file)",
                     packages=["busybox-static"], update=True)
    if host.get_fact(DockerImage, image=placement.ANCHOR_IMAGE):
        host.noop(f"image {placement.ANCHOR_IMAGE}")
        return
    from pyinfra.operations import server

    image = shlex.quote(placement.ANCHOR_IMAGE)
    server.shell(
        name=f"Build {placement.ANCHOR_IMAGE} from /bin/busybox",
        commands=["d=$(mktemp -d) && mkdir -p \"$d/bin\" && cp /bin/busybox \"$d/bin/busybox\" && "
                  f"tar -C \"$d\" -c . | docker import - {image} >/dev/null && rm -rf \"$d\""])
