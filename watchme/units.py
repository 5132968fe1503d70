"""systemd units linked into /etc/systemd/system (the seed's layout): what is there, and what
systemd has actually loaded.

Linking itself is stock `files.link` after watchme/adopt.py kept what was there.
"""

from __future__ import annotations

import json
import shlex

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation

from watchme.fact_batch import Call
# SubState / UnitFileState values read as running / enabled: one definition, which the no-op
# memo's hash uses too (a unit's answer is what these make of it).
from watchme.noop_answers import ENABLED, RUNNING


def unit_name(service) -> str:
    """The unit file name of a registry service (field `unit`, default watchme-<name>.service)."""
    return getattr(service, "unit", None) or f"watchme-{service.name}.service"


class UnitFiles(FactBase):
    """Every *.service in a directory: {file name: link target, or None for a regular file}.

    One find, not a readlink per link (~25 ms of the host's CPU on a no-op with 15 units)."""

    def command(self, directory: str) -> str:
        if not directory.startswith("/"):  # find would take "-x" for an option
            raise ValueError(f"UnitFiles takes an absolute directory: {directory!r}")
        d = shlex.quote(directory)
        return (f"find {d}/ -mindepth 1 -maxdepth 1 -name '*.service' ! -name '.*' "
                "\\( -type l -printf 'link %f %l\\n' -o -type f -printf 'file %f\\n' \\) "
                "2>/dev/null || true")

    def process(self, output):
        units: dict[str, str | None] = {}
        for line in sorted(output):  # by name, as the shell's glob listed them
            kind, _, rest = line.partition(" ")
            if kind == "link":
                name, _, target = rest.partition(" ")
                units[name] = target
            elif kind == "file":
                units[rest] = None
        return dict(sorted(units.items()))


class WantsLinks(FactBase):
    """The enablement links under /etc/systemd/system/*.wants/: {link path: its target}.

    `systemctl enable` of a unit that is a link (the seed's setup_server.sh links units from
    its git clone) points the wants link at the link's target, i.e. into the clone; relinking
    the unit alone leaves those behind."""

    def command(self, directory: str = "/etc/systemd/system") -> str:
        return (f"find {shlex.quote(directory)} -mindepth 2 -maxdepth 2 -type l "
                "-path '*.wants/*' -printf '%p %l\\n' 2>/dev/null || true")

    def process(self, output):
        return dict(line.split(" ", 1) for line in output if " " in line)


def stale_wants(links: dict[str, str], units: set[str], unit_dir: str) -> dict[str, str]:
    """{wants link: the target `systemctl enable` would give it now} for our units' wants
    links that point elsewhere (a path that is neither our unit file nor its link)."""
    out = {}
    for path, target in sorted(links.items()):
        name = path.rsplit("/", 1)[-1]
        if name in units and target not in (f"{unit_dir}/{name}", f"/etc/systemd/system/{name}"):
            out[path] = f"{unit_dir}/{name}"
    return out


class VendorUnits(FactBase):
    """Names of the units the OS packages ship (docker.service, nginx.service, ...)."""

    def command(self) -> str:
        return "ls /lib/systemd/system /usr/lib/systemd/system 2>/dev/null | grep '[.]service$' | sort -u"

    def process(self, output):
        return set(output)


# What stock pyinfra counts as running / enabled (facts.systemd SystemdStatus, SystemdEnabled).
GUARD_UNITS = ("watchme-guard.service", "watchme-guard.timer")  # tasks/guard.py


class LoadedUnits(FactBase):
    """What systemd runs, for all units in one call: {unit: {"need_reload": bool, "active": str,
    "running": bool, "enabled": bool}} (running/enabled as stock systemd.service reads them).

    NeedDaemonReload=yes means the file on disk changed since systemd loaded it: a run killed
    between writing a unit and `daemon-reload` leaves exactly that, and the file alone looks
    up to date.
    """

    def command(self, units: list[str]) -> str:
        return shlex.join(["systemctl", "show", "-p", "Id", "-p", "NeedDaemonReload",
                           "-p", "ActiveState", "-p", "SubState", "-p", "UnitFileState",
                           "--", *units]) + " 2>/dev/null || true"

    def process(self, output):
        out: dict[str, dict] = {}
        current: dict[str, str] = {}
        for line in [*output, ""]:
            if not line.strip():
                if current.get("Id"):
                    out[current["Id"]] = {"need_reload": current.get("NeedDaemonReload") == "yes",
                                          "active": current.get("ActiveState", ""),
                                          "running": current.get("SubState") in RUNNING,
                                          "enabled": current.get("UnitFileState") in ENABLED}
                current = {}
                continue
            key, _, value = line.partition("=")
            current[key] = value
        return out


def loaded(units: list[str]) -> dict:
    """LoadedUnits of `units`, read as part of ONE fact for every unit this deploy asks
    systemd about (host.data.systemd_units, which the bootstrap records once it knows the
    host's units): one systemctl process on a no-op instead of six (~70 ms of the host's
    CPU). A unit outside that list (a deploy that skipped the bootstrap) is asked on its own."""
    every = list(host.data.get("systemd_units") or [])
    asked = every if set(units) <= set(every) else sorted(set(units))
    found = host.get_fact(LoadedUnits, units=asked)
    return {u: state for u, state in found.items() if u in units}


class RunningContainers(FactBase):
    """What Docker runs for the given containers: {container: {"memory": bytes, "files":
    [the compose files it was created from], "ips": {network: ip}}}, running ones only.

    A run killed after writing a service's compose override but before restarting the
    service leaves the override looking up to date while the container still runs with the
    old memory limit or IP: only the container itself tells.

    Asked through the host script (files/docker_api.py, the Engine API: ~13 MB) rather than
    the Docker CLI (~37 MB, the largest process of a no-op deploy on the host). Before the
    deploy installed the scripts (a new or adopted server's first run) the CLI answers.
    """

    FORMAT = ("{{.Name}} {{.State.Running}} {{.HostConfig.Memory}} "
              "files={{index .Config.Labels \"com.docker.compose.project.config_files\"}}"
              "{{range $k, $v := .NetworkSettings.Networks}} {{$k}}={{$v.IPAddress}}{{end}}")

    @staticmethod
    def default():
        # None of them exists (all stopped and removed): docker inspect prints nothing, and
        # pyinfra gives a fact without output its default instead of calling process().
        return {}

    def call(self, containers: list[str], script: str = "") -> Call:
        names = shlex.join(["--", *containers])
        # docker inspect exits 1 when one of them does not exist, after printing the others.
        cli = f"{shlex.join(['docker', 'inspect', '-f', self.FORMAT])} {names} 2>/dev/null || true"
        return Call(script=script or f"{host.data.config_root}/scripts/docker_api.py",
                    argv=["running", "--", *containers], fallback=cli)

    def command(self, containers: list[str], script: str = "") -> str:
        return self.call(containers, script).command()

    def process(self, output):
        if output and output[0].startswith("{"):  # the script's JSON
            return json.loads("\n".join(output))
        out: dict[str, dict] = {}
        for line in output:
            fields = line.split()
            if len(fields) < 3:  # docker inspect prints an empty line for a missing container
                continue
            name, running, memory, *rest = fields
            if running != "true" or not memory.isdigit():
                continue
            files = rest.pop(0).removeprefix("files=") if rest and rest[0].startswith("files=") else ""
            out[name.lstrip("/")] = {"memory": int(memory), "files": [f for f in files.split(",") if f],
                                     "ips": dict(n.split("=", 1) for n in rest if "=" in n)}
        return out


def drifted(service, container: dict | None, network: str, override: str) -> bool:
    """A running container created from its override whose memory limit or fixed IP is not
    the registry's: it was created before the override changed and must be recreated
    (restarted). One not created from the override (adopted as the operator started it) is
    left running: adoption restarts nothing."""
    if container is None or override not in container["files"]:
        return False
    if container["memory"] != service.memory_mib * 1024 * 1024:
        return True
    return service.ip is not None and container["ips"].get(network) != str(service.ip)


def ours(units: dict[str, str | None], target_dir: str) -> list[str]:
    """Names of the links that point into target_dir: the units this deploy made. Links into
    anywhere else (the operator's git clone) are never ours to stop or delete."""
    prefix = target_dir.rstrip("/") + "/"
    return sorted(n for n, t in units.items() if t and t.startswith(prefix))


@operation()
def units_enabled(enable: list[str], start: list[str] | None = None,
                  restart: list[str] | None = None):
    """Enable `enable`, start `start`, restart the running ones of `restart`, in one command.

    Own operation, not systemd.service per unit: stock reads two facts and runs one command
    per unit (~3 SSH sessions each, 15 units); this reads LoadedUnits once for all and joins
    what is needed into one command of systemctl calls. A unit in `restart` that is not running is
    only started if it is in `start` (stock `restarted=True` restarts running units only).
    """
    start, restart = list(start or []), set(restart or [])
    units = sorted({*enable, *start, *restart})
    found = loaded(units)
    steps = []
    disabled = [u for u in enable if not found.get(u, {}).get("enabled")]
    if disabled:
        steps.append(["enable", "--", *disabled])
    # One unit at a time, in the caller's order, as stock ops did: the infrastructure unit
    # (the network) is up before the services that require it.
    steps += [["start", "--", u] for u in start if not found.get(u, {}).get("running")]
    steps += [["restart", "--", u] for u in sorted(restart) if found.get(u, {}).get("running")]
    if not steps:
        host.noop(f"{len(units)} unit(s) enabled and running as wanted")
        return
    yield StringCommand(" && ".join(shlex.join(["systemctl", *s]) for s in steps))
