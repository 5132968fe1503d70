"""`watchme rollout NAME [--image REF] [--json] [--timeout S]`: a new image, health-gated.

Through the deploy's own inventory and group data (watchme/inspect.py), on every target host:
take the deploy lock (so a rollout never overlaps a deploy), record the image the container
runs now, pull (compose pull of the service, or `docker pull REF` pinned in the override's
`image:`), restart the service's unit, wait until the container runs the new image, probe the
service's route through Nginx until it answers `probe.expect`. If it does not within --timeout,
pin the previous image (`<repo>@sha256:...`) in the override, restart, probe again, and exit 1
naming what failed. Exit 0: live; 1: rolled back; 2: rollback failed too (or bad input, or
no host reached). Each rollout is appended to /var/lib/watchme/rollouts.json (newest last,
last 50 kept); pins live in /var/lib/watchme/image-pins.json, which deploys render back.
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import sys
import time

from watchme import images, lock

ROLLOUTS = "/var/lib/watchme/rollouts.json"
KEEP = 50
COMPOSE = ('if docker compose version >/dev/null 2>&1; then c="docker compose"; '
           "else c=docker-compose; fi; ")


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
        b64 = base64.b64encode(text.encode()).decode()
        p = shlex.quote(path)
        self.must(f"mkdir -p $(dirname {p}) && echo {b64} | base64 -d > {p}.new && "
                  f"chmod 644 {p}.new && mv {p}.new {p}", f"write {path}")


def running(r: Remote, container: str) -> dict | None:
    ok, out = r.run(f"docker inspect {shlex.quote(container)}")
    if not ok:
        return None
    c = json.loads(out)[0]
    ok, img = r.run(f"docker image inspect {shlex.quote(c['Image'])}")
    digests = json.loads(img)[0].get("RepoDigests") or [] if ok else []
    return {"id": c["Image"], "config_image": c["Config"]["Image"],
            "running": bool(c["State"]["Running"]), "repo_digests": digests,
            "pin": images.pin_for(c["Config"]["Image"], c["Image"], digests)}


def probe_command(data, service) -> str:
    """curl through the host Nginx, as a client would: https with SNI, or http when http_only."""
    path = shlex.quote(service.probe_url_path)
    name = data.get("server_name", "api.hey-watch.me")
    if data.get("http_only", False):
        url = f"http://127.0.0.1{service.probe_url_path}"
        return (f"curl -s -o /dev/null -w '%{{http_code}}' -m 5 -H {shlex.quote('Host: ' + name)} "
                f"{shlex.quote(url)}")
    return (f"curl -sk -o /dev/null -w '%{{http_code}}' -m 5 --resolve "
            f"{shlex.quote(name + ':443:127.0.0.1')} {shlex.quote('https://' + name)}{path}")


def wait_live(r: Remote, data, service, image_id: str | None, deadline: float) -> str:
    """'' once the container runs (image_id when given) and the route answers; else why not."""
    why = "not checked"
    while True:
        now = running(r, service.container)
        if now is None or not now["running"]:
            why = f"container {service.container} is not running"
        elif image_id and now["id"] != image_id:
            why = f"container {service.container} runs {now['id'][:19]}, not {image_id[:19]}"
        else:
            ok, code = r.run(probe_command(data, service), timeout=10)
            code = code.strip()[-3:]
            if code == str(service.probe.expect):
                return ""
            why = (f"route {service.probe_url_path} answered {code or 'nothing'}, "
                   f"expected {service.probe.expect}")
        if time.monotonic() >= deadline:
            return why
        time.sleep(1)


def rollout(state, host, name: str, image: str | None, timeout: float) -> dict:
    data = host.data
    service = data.registry.by_name(name)
    unit = getattr(service, "unit", None) or f"{service.name}.service"
    r = Remote(state, host)
    result = {"host": host.name, "service": name, "unit": unit, "image": image,
              "started": lock.now(), "status": "failed", "failed": "", "previous": None, "new": None}
    taken = lock.parse(r.must(lock.script("take", lock.holder()), "take the deploy lock").splitlines())
    if taken.get("status") != "taken":
        raise Failed(f"deploy lock held by {lock.describe_holder(taken.get('holder'))}")
    try:
        _steps(r, data, service, unit, image, timeout, result)
    except (Failed, images.ComposeError) as e:  # before anything changed: nothing to roll back
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


def _steps(r: Remote, data, service, unit, image, timeout, result) -> None:
    compose_file = service.compose_file
    target = images.compose_target(
        r.must(f"cat {shlex.quote(compose_file)}", f"read {compose_file}"),
        service.container, data.get("network_name", "watchme-network"))
    override = images.override_path(data.config_root, service.name)
    before = running(r, service.container)
    result["previous"] = before and {"id": before["id"], "pin": before["pin"]}
    pins = images.parse_pins(r.run(f"cat {images.PINS} 2>/dev/null")[1])

    def set_pin(ref: str | None) -> None:
        if ref:
            pins[service.name] = ref
        else:
            pins.pop(service.name, None)
        r.write(images.PINS, json.dumps(pins, indent=1, sort_keys=True) + "\n")
        r.write(override, images.render_override(service, target, compose_file, ref))

    files = f"-f {shlex.quote(compose_file)} -f {shlex.quote(override)}"
    try:
        if image:
            r.must(f"docker pull -q {shlex.quote(image)}", f"pull {image}", timeout=600)
            set_pin(image)
            want = image
        else:
            set_pin(None)
            r.must(COMPOSE + f"$c {files} pull -q {shlex.quote(target['key'])}",
                   "compose pull", timeout=600)
            want = target["image"]  # the compose file's own tag, now the pulled image
        ok, out = r.run(f"docker image inspect -f '{{{{.Id}}}}' {shlex.quote(want)}") \
            if want else (False, "")
        new_id = out.strip().splitlines()[-1] if ok and out.strip() else None
        result["new"] = {"id": new_id, "ref": image or "compose file"}
        r.must(f"systemctl restart {shlex.quote(unit)}", f"restart {unit}", timeout=120)
        why = wait_live(r, data, service, new_id, time.monotonic() + timeout)
        if not why:
            result["status"] = "live"
            return
    except Failed as e:
        why = str(e)
    result["failed"] = why
    if before is None:
        result["status"] = "failed"  # nothing ran before: nothing to go back to
        return
    set_pin(before["pin"])
    r.run(f"systemctl restart {shlex.quote(unit)}", timeout=120)
    back = wait_live(r, data, service, before["id"], time.monotonic() + timeout)
    result["status"] = "rolled_back" if not back else "rollback_failed"
    if back:
        result["rollback_failed"] = back


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
        try:
            res = rollout(state, host, a.name, a.image, a.timeout)
        except (Failed, images.ComposeError) as e:
            res = {"host": host.name, "service": a.name, "status": "failed", "failed": str(e)}
        results.append(res)
        rc = max(rc, {"live": 0, "rolled_back": 1}.get(res["status"], 2))
    for res in results:
        if a.json:
            print(json.dumps(res))
        else:
            line = f"{res['host']}: {res['service']}: {res['status']}"
            if res.get("failed"):
                line += f" ({res['failed']})"
            print(line)
    return rc
