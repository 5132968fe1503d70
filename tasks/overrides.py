"""One compose override file per service: the registry's memory limit, fixed IP and container
name applied where the container is created (issue 12 §3 and §4).

The memory budget adds up `memory_limit`, but only a limit on the container is real; and a
container compose recreates without `ipv4_address` gets a dynamic IP, which the guard would
then "fix" every 5 minutes. The user's compose file stays theirs (never written); each unit
runs `compose -f <compose_file> -f {config_root}/compose/<name>.override.yml`, and compose
merges the override into the service whose container_name is the registry's container (or the
file's only service). `watchme rollout` rewrites the same file with an `image:` pin, recorded
in /var/lib/watchme/image-pins.json, so a deploy renders the pin back instead of undoing it.
"""

from __future__ import annotations

from pyinfra import host, inventory, logger
from pyinfra.api import FactBase
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import FindFiles
from pyinfra.operations import files

from watchme import bundle, images
from watchme.network import ComposeFiles
from watchme.placement import services_here


class ImagePins(FactBase):
    """The images `watchme rollout` pinned, {service: ref}; {} when none."""

    def command(self, path: str = images.PINS) -> str:
        return f"cat {path} 2>/dev/null || echo '{{}}'"

    def process(self, output):
        return images.parse_pins("\n".join(output))


def apply() -> dict[str, bool]:
    """Render every enabled service's override into the bundle (watchme/bundle.py); returns
    {service: its override is rewritten} so the units restart a running service whose
    override changed. Call bundle.changed() only after the bundle is installed: see units."""
    d = host.data
    services = services_here(host, inventory)
    directory = f"{d.config_root}/compose"
    compose = host.get_fact(ComposeFiles, paths=[s.compose_file for s in services])
    pins = host.get_fact(ImagePins)
    bundle.directory(directory, mode="755", user="root", group="root")
    problems, out = [], {}
    for s in services:
        found = compose.get(s.compose_file)
        if found is None:
            # A new server: the service's repo is not cloned yet; the unit is not started either.
            logger.warning(f"{host.print_prefix}{s.name}: no override yet, "
                           f"{s.compose_file} is not on the host")
            continue
        try:
            target = images.compose_target(found["text"], s.container, d.network_name)
        except images.ComposeError as e:
            problems.append(f"services[{s.name}].compose_file: {s.compose_file} {e}")
            continue
        path = images.override_path(d.config_root, s.name)
        bundle.add(path, images.render_override(s, target, s.compose_file, pins.get(s.name)))
        out[s.name] = path
    if problems:
        raise DeployError(f"{host.name}: " + "; ".join(problems))
    return out


def prune() -> None:
    """Remove the override of a service that left this host (the registry, disabled, or placed
    elsewhere), after the units stopped it: its unit's ExecStop still names the file. Pins
    stay recorded."""
    d = host.data
    directory = f"{d.config_root}/compose"
    wanted = {images.override_path(d.config_root, s.name) for s in services_here(host, inventory)}
    found = host.get_fact(FindFiles, path=directory, maxdepth=1, fname="*.override.yml") or []
    for path in sorted(set(found) - wanted):
        files.file(name=f"Remove the override of a removed service {path}", path=path,
                   present=False)
