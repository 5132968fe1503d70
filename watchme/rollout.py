"""`watchme rollout NAME [--image REF] [--json] [--timeout S]`: a new image, health-gated,
with the route answering throughout.

Through the deploy's own inventory and group data (watchme/inspect.py), on each host that
runs the service, under the deploy lock (a rollout never overlaps a deploy): remove what a
killed rollout left (watchme/candidate.py), record the image the container runs now, pull
(`docker pull REF`, pinned in the override's `image:`, or compose pull of the file's tag).
Then, when the host has room for a second copy (MemAvailable >= memory_limit +
memory_os_reserve_mib) and Nginx runs beside the service (mode "candidate"):
1. start a candidate of the new image (the service's compose definition, another address)
   and probe it directly: one that exits or answers wrong is removed, status "rejected",
   and nothing that serves clients was touched;
2. switch the service's Nginx upstream to the candidate (watchme/rollout_site.py: the
   deploy's safe cycle, a graceful reload);
3. pin the new image, restart the unit, wait for the fixed-IP container to run it and answer
   (else pin the previous digest back, restart: "rolled_back");
4. switch Nginx back to the registry's site (byte-identical to the deploy's render), probe
   through Nginx, remove the candidate.
Otherwise (mode "in_place", with the reason) the unit restarts in place: the route is down for
the restart, and a new image that does not answer within --timeout is rolled back.
Exit 0: live; 1: rejected or rolled back; 2: failed (a rollback that failed too, bad input, no
host reached). Each rollout is appended to /var/lib/watchme/rollouts.json (newest last, last
50 kept); pins live in /var/lib/watchme/image-pins.json, which deploys render back.
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import sys
import time

from watchme import candidate, images, lock, placement, rollout_site
from watchme import settings as settings_module
from watchme.candidate import COMPOSE
from watchme.settings import ConfigError
from watchme.units import unit_name
from watchme.uri import upstream_uri

ROLLOUTS = "/var/lib/watchme/rollouts.json"
KEEP = 50


class Failed(Exception):
    pass


class Remote:
    """Commands on one host as root, through the connection pyinfra opened."""

    def __init__(self, state, host):
        self.state, self.host = state, host

    def run(self, cmd: str, timeout: float | None = None) -> tuple[bool, str]:
        from pyinfra.api import StringCommand
        from pyinfra.context import ctx_host, ctx_state

        with ctx_state.use(self.state), ctx_host.use(self.host):
            ok, out = self.host.run_shell_command(StringCommand(cmd), _sudo=True,
                                                  _timeout=timeout, print_output=False)
        return ok, "\n".join([*out.stdout_lines, *out.stderr_lines])

    def must(self, cmd: str, what: str, timeout: float | None = None) -> str:
        ok, out = self.run(cmd, timeout)
        if not ok:
            raise Failed(f"{what}: {out.strip()[-500:]}")
        return out

    def write(self, path: str, text: str) -> None:
        self.must(write_command(path, text), f"write {path}")


def write_command(path: str, text: str) -> str:
    """Replace path with text atomically (a rename)."""
    b64 = base64.b64encode(text.encode()).decode()
    p = shlex.quote(path)
    return (f"mkdir -p $(dirname {p}) && echo {b64} | base64 -d > {p}.new && "
            f"chmod 644 {p}.new && mv {p}.new {p}")


def inspect(r: Remote, container: str) -> dict | None:
    ok, out = r.run(f"docker inspect {shlex.quote(container)} 2>/dev/null")
    try:
        return json.loads(out)[0] if ok else None
    except (ValueError, IndexError):
        return None


def running(r: Remote, container: str) -> dict | None:
    c = inspect(r, container)
    if c is None:
        return None
    ok, img = r.run(f"docker image inspect {shlex.quote(c['Image'])}")
    digests = json.loads(img)[0].get("RepoDigests") or [] if ok else []
    return {"id": c["Image"], "config_image": c["Config"]["Image"],
            "running": bool(c["State"]["Running"]), "repo_digests": digests,
            "pin": images.pin_for(c["Config"]["Image"], c["Image"], digests)}


def _curl(url: str, server_name: str) -> str:
    return (f"curl -s -o /dev/null -w '%{{http_code}}' -m 5 -H {shlex.quote('Host: ' + server_name)} "
            f"{shlex.quote(url)}")


def probe_command(data, service) -> str:
    """curl through the host Nginx, as a client would: https with SNI, or http when http_only."""
    path = shlex.quote(service.probe_url_path)
    name = data.get("server_name", "api.hey-watch.me")
    if data.get("http_only", False):
        return _curl(f"http://127.0.0.1{service.probe_url_path}", name)
    return (f"curl -sk -o /dev/null -w '%{{http_code}}' -m 5 --resolve "
            f"{shlex.quote(name + ':443:127.0.0.1')} {shlex.quote('https://' + name)}{path}")


def direct_probe_command(data, service, address: str, port: int) -> str:
    """curl straight at a container (address:port), with the URI Nginx would send it for the
    service's probe path and Nginx's Host header."""
    upstream = f"http://{address}:{port}{service.upstream_path}"
    return _curl(f"http://{address}:{port}"
                 + upstream_uri(service.public_path, upstream, service.probe_url_path),
                 data.get("server_name", "api.hey-watch.me"))


def _answer(r: Remote, cmd: str, service) -> str:
    ok, code = r.run(cmd, timeout=10)
    code = code.strip()[-3:]
    if code == str(service.probe.expect):
        return ""
    return f"answered {code or 'nothing'}, expected {service.probe.expect}"


def wait_live(r: Remote, data, service, image_id: str | None, deadline: float,
              direct: tuple[str, int] | None = None) -> str:
    """'' once the fixed container runs (image_id when given) and answers, through Nginx or
    `direct` at (address, port); else why not."""
    why = "not checked"
    while True:
        now = running(r, service.container)
        if now is None or not now["running"]:
            why = f"container {service.container} is not running"
        elif image_id and now["id"] != image_id:
            why = f"container {service.container} runs {now['id'][:19]}, not {image_id[:19]}"
        else:
            cmd = direct_probe_command(data, service, *direct) if direct else probe_command(data, service)
            why = _answer(r, cmd, service)
            if not why:
                return ""
            why = (f"{service.container} at {direct[0]}:{direct[1]} " if direct else
                   f"route {service.probe_url_path} ") + why
        if time.monotonic() >= deadline:
            return why
        time.sleep(1)


def wait_candidate(r: Remote, data, service, address: str, port: int, deadline: float) -> str:
    """'' once the candidate answers probe.expect at its own address; else why it is rejected
    (it exited: at once; it answers wrong: at the deadline)."""
    while True:
        why = candidate.state(inspect(r, candidate.name(service)))
        if why:
            return why
        why = _answer(r, direct_probe_command(data, service, address, port), service)
        if not why:
            return ""
        if time.monotonic() >= deadline:
            return f"the candidate at {address}:{port} {why}"
        time.sleep(0.5)


class Rollout:
    """One service's rollout on one host; result is the JSON record."""

    def __init__(self, state, host, r: Remote, service, unit: str, image: str | None,
                 timeout: float, result: dict):
        self.state, self.host, self.r, self.data = state, host, r, host.data
        self.service, self.unit, self.image, self.timeout, self.result = \
            service, unit, image, timeout, result
        self.settings = settings_module.validate(host.data)
        self.override = images.override_path(self.data.config_root, service.name)
        self.pins = images.parse_pins(r.run(f"cat {images.PINS} 2>/dev/null")[1])

    def pin_and_restart(self, ref: str | None) -> None:
        """Pin ref (None: the compose file's own image) in the pins record and the override,
        and restart the unit, in ONE remote command that ignores the hangup of a killed
        rollout's session: a pin is never left written without its restart (the deploy
        renders pins back, but restarts a running unit only when its override changes)."""
        s = self.service
        if ref:
            self.pins[s.name] = ref
        else:
            self.pins.pop(s.name, None)
        pins = json.dumps(self.pins, indent=1, sort_keys=True) + "\n"
        override = images.render_override(s, self.target, s.compose_file, ref)
        self.r.must("trap '' HUP PIPE; " + write_command(images.PINS, pins) + " && "
                    + write_command(self.override, override)
                    + f" && systemctl restart {shlex.quote(self.unit)}",
                    f"pin {ref or 'the compose file image'} and restart {self.unit}", timeout=180)

    def deadline(self) -> float:
        return time.monotonic() + self.timeout

    # --- steps ---------------------------------------------------------------------------------

    def run(self) -> None:
        r, s, res = self.r, self.service, self.result
        self.compose_text = r.must(f"cat {shlex.quote(s.compose_file)}", f"read {s.compose_file}")
        self.target = images.compose_target(self.compose_text, s.container, self.settings.network_name)
        self.live = inspect(r, s.container)
        self.before = running(r, s.container)
        res["previous"] = self.before and {"id": self.before["id"], "pin": self.before["pin"]}
        self.site = rollout_site.Site(self.state, self.host, r) if placement.is_front(self.host) else None
        res["cleaned"] = self.clean_leftovers()
        ref, new_id = self.pull()
        res["new"] = {"id": new_id, "ref": self.image or "compose file"}
        reason = self.why_in_place()
        if reason:
            res["mode"], res["reason"] = "in_place", reason
            self.in_place(ref, new_id)
        else:
            res["mode"] = "candidate"
            self.with_candidate(ref, new_id)

    def clean_leftovers(self) -> list[str]:
        """Remove the candidates a killed rollout left; one that still has the route gets it
        back to the registry's site first (the safe cycle refuses if the fixed IP is down)."""
        r = self.r
        found = candidate.parse_list(r.run(candidate.LIST)[1].splitlines())
        for cname, info in sorted(found.items()):
            if self.site is not None:
                text = r.run(f"cat {shlex.quote(self.site.paths['live'])}")[1]
                if any(f"http://{a}:" in text for a in info["addresses"]):
                    # The killed rollout may have been restarting the unit: the fixed container
                    # must answer before it gets the route back (the cycle would refuse).
                    s = self.service
                    why = wait_live(r, self.data, s, None, self.deadline(), (s.upstream_host, s.port)) \
                        if info["service"] == s.name else ""
                    why = why or self.site.apply(self.site.render())
                    if why:
                        raise Failed(f"leftover candidate {cname} still has the route and it "
                                     f"could not go back to the registry's site ({why}); run "
                                     "the deploy")
            r.must(candidate.remove_command([cname]), f"remove leftover candidate {cname}")
        return sorted(found)

    def pull(self) -> tuple[str, str | None]:
        """Pull the new image; (the reference the containers will name, its image ID). Nothing
        that runs is touched: the compose file's tag or the --image reference only."""
        r, s = self.r, self.service
        if self.image:
            r.must(f"docker pull -q {shlex.quote(self.image)}", f"pull {self.image}", timeout=600)
            ref = self.image
        else:
            r.must(COMPOSE + f"$c -f {shlex.quote(s.compose_file)} pull -q "
                   f"{shlex.quote(self.target['key'])}", "compose pull", timeout=600)
            ref = self.target["image"]  # the compose file's own tag, now the pulled image
        ok, out = r.run(f"docker image inspect -f '{{{{.Id}}}}' {shlex.quote(ref)}") if ref \
            else (False, "")
        return ref, (out.strip().splitlines()[-1] if ok and out.strip() else None)

    def why_in_place(self) -> str:
        """'' when a candidate can carry the route; else why the rollout restarts in place."""
        r, s, st = self.r, self.service, self.settings
        front = self.site is not None
        self.address = candidate.choose_address(
            st.dynamic_range, candidate.used_addresses(r.run(
                f"docker network inspect {shlex.quote(st.network_name)}")[1]),
            [st.network_gateway, *(x.ip for x in self.data.registry.services if x.ip)])
        return candidate.in_place_reason(
            front=front, overlay=placement.swarm(self.host, self.state.inventory),
            running=bool(self.before and self.before["running"]), container=s.container,
            has_image=bool(self.target["image"] or self.image),
            site_is_render=front and self.site.is_live(self.site.render()),
            address=self.address, dynamic=st.dynamic_range,
            room=candidate.room_for_second_copy(
                candidate.available_mib(r.run("cat /proc/meminfo")[1]), s.memory_mib,
                st.memory_os_reserve_mib))

    def with_candidate(self, ref: str, new_id: str | None) -> None:
        r, s, res = self.r, self.service, self.result
        cname, address = candidate.name(s), str(self.address)
        port = candidate.container_port(self.live, s.port)
        res["candidate"] = {"name": cname, "address": address, "port": port}
        path = candidate.override_path(self.site.paths["state_dir"], s)
        project = ((self.live or {}).get("Config", {}).get("Labels") or {}).get(
            "com.docker.compose.project")
        r.write(path, candidate.render_override(
            s, self.target, s.compose_file, ref, address,
            candidate.shared_volumes(self.compose_text, project)))
        remove = candidate.remove_command([cname])

        # 1. The candidate, probed at its own address: clients never see a bad one.
        r.run(remove)
        ok, out = r.run(candidate.run_command(s, self.target["key"], s.compose_file, path), timeout=300)
        why = f"the candidate did not start: {out.strip()[-300:]}" if not ok else \
            wait_candidate(r, self.data, s, address, port, self.deadline())
        if why:
            r.run(remove)
            res["status"], res["failed"] = "rejected", why
            return
        # 2. The route to the candidate (graceful reload through the safe cycle).
        why = self.site.apply(self.site.render({s.name: (address, port)}))
        if why:
            if self.site.is_live(self.site.render()):
                r.run(remove)  # the cycle put the registry's site back
            res["status"], res["failed"] = "rejected", why
            return
        # 3. The fixed-IP container on the new image, while the candidate serves.
        direct = (s.upstream_host, s.port)
        try:
            self.pin_and_restart(self.image)  # --image pins; a compose-pull rollout clears it
            why = wait_live(r, self.data, s, new_id, self.deadline(), direct)
        except Failed as e:
            why = str(e)
        if why:
            res["failed"] = why
            try:
                self.pin_and_restart(self.before["pin"])
            except Failed:
                pass  # the wait below says what runs
            back = wait_live(r, self.data, s, self.before["id"], self.deadline(), direct)
            if back:  # the candidate keeps the route: it is the only copy that answers
                res["status"], res["rollback_failed"] = "rollback_failed", \
                    f"{back}; Nginx still routes to the candidate {cname} at {address}"
                return
            res["status"] = "rolled_back"
        # 4. The route back to the registry's upstream: the site the deploy renders.
        why = self.site.apply(self.site.render())
        if why:
            res["status"] = "failed"
            res["failed"] = (res["failed"] + "; " if res["failed"] else "") + \
                f"{why}; Nginx still routes to the candidate {cname} at {address}"
            return
        if res["status"] != "rolled_back":
            why = wait_live(r, self.data, s, new_id, self.deadline())
            res["status"], res["failed"] = ("live", "") if not why else ("failed", why)
        r.run(remove)
        r.run(f"rm -f {shlex.quote(path)}")

    def in_place(self, ref: str, new_id: str | None) -> None:
        """The restart of the one container (no room or no way for a candidate): the route
        is down for the restart; a failing new image is rolled back."""
        r, s, res = self.r, self.service, self.result
        try:
            self.pin_and_restart(self.image)
            why = wait_live(r, self.data, s, new_id, self.deadline())
            if not why:
                res["status"] = "live"
                return
        except Failed as e:
            why = str(e)
        res["failed"] = why
        if self.before is None:
            res["status"] = "failed"  # nothing ran before: nothing to go back to
            return
        try:
            self.pin_and_restart(self.before["pin"])
        except Failed:
            pass  # the wait below says what runs
        back = wait_live(r, self.data, s, self.before["id"], self.deadline())
        res["status"] = "rolled_back" if not back else "rollback_failed"
        if back:
            res["rollback_failed"] = back


def rollout(state, host, name: str, image: str | None, timeout: float) -> dict:
    data = host.data
    service = data.registry.by_name(name)
    unit = unit_name(service)
    r = Remote(state, host)
    result = {"host": host.name, "service": name, "unit": unit, "image": image,
              "started": lock.now(), "status": "failed", "failed": "", "previous": None, "new": None}
    wait = int(data.get("lock_wait_seconds", 0) or 0)  # CI waits behind a deploy (deploy.yml)
    taken = lock.parse(r.must(lock.script("take", lock.holder(), wait=wait, facts=False), "take the deploy lock",
                              timeout=wait + 120).splitlines())
    if taken.get("status") != "taken":
        raise Failed(f"deploy lock held by {lock.describe_holder(taken.get('holder'))}")
    try:
        Rollout(state, host, r, service, unit, image, timeout, result).run()
    except (Failed, images.ComposeError) as e:
        result["failed"] = str(e)
    finally:
        result["finished"] = lock.now()
        ok, old = r.run(f"cat {ROLLOUTS} 2>/dev/null")
        try:
            history = json.loads(old) if ok else []
        except ValueError:
            history = []
        r.write(ROLLOUTS, json.dumps(([*history, result] if isinstance(history, list)
                                      else [result])[-KEEP:], indent=1) + "\n")
        r.run(lock.script("release", record=taken.get("record")))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="watchme rollout", description=__doc__.splitlines()[0])
    p.add_argument("name", help="the service's registry name")
    p.add_argument("--image", help="an image reference to run (pinned); default: compose pull")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for the route")
    p.add_argument("--json", action="store_true", help="one JSON object per host (for CI)")
    p.add_argument("--data", action="append", help="key=value, as for pyinfra")
    a = p.parse_args(argv)
    try:
        if a.image:
            images.check_ref(a.image)
        from watchme import inspect
        inspect.root()
    except ValueError as e:  # bad input, or no checkout here
        print(f"rollout: {e}", file=sys.stderr)
        return 2
    state, failed = inspect.connect(inspect.parse_data(a.data))
    results, rc = [], 0 if not failed else 2
    for name, why in failed.items():
        results.append({"host": name, "service": a.name, "status": "unreachable", "failed": why})
    for host in state.inventory.get_active_hosts():
        try:
            host.data.registry.by_name(a.name)
        except Exception:  # noqa: BLE001 - the registry names its own error
            names = ", ".join(s.name for s in host.data.registry.services)
            print(f"rollout: no service {a.name!r} in the registry; one of: {names}", file=sys.stderr)
            return 2
        if a.name not in {s.name for s in placement.services_here(host, state.inventory)}:
            continue  # placed on another host (or disabled): nothing runs here
        try:
            res = rollout(state, host, a.name, a.image, a.timeout)
        except (Failed, images.ComposeError, ConfigError) as e:
            res = {"host": host.name, "service": a.name, "status": "failed", "failed": str(e)}
        results.append(res)
        rc = max(rc, {"live": 0, "rolled_back": 1, "rejected": 1}.get(res["status"], 2))
    if not results:
        print(f"rollout: {a.name} runs on no host (enabled: false?); nothing to roll out",
              file=sys.stderr)
        return 2
    for res in results:
        if a.json:
            print(json.dumps(res))
        else:
            line = f"{res['host']}: {res['service']}: {res['status']}"
            if res.get("failed"):
                line += f" ({res['failed']})"
            print(line)
    return rc
