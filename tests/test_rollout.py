"""watchme rollout and the compose overrides, end to end on a real test host.

A local registry inside the host (Debian's docker-registry on 127.0.0.1:5000) holds app:v1,
a good v2, v2a (exits at once) and v2b (answers 500). The override gives the container the
registry's memory limit and fixed IP. A probe loop (every 0.2 s, through Nginx as a client)
watches the route during every rollout: the bad images are rejected at their candidate with
v1 answering throughout and the live container untouched; the good v2 goes live with zero
failed probes; with no memory for a second copy the rollout restarts in place and says so;
a rollout SIGKILLed after its Nginx switch is repaired by the next deploy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest

from tests import fake_services, registry_images as ri
from tests.conftest import ROOT, WATCHME, assert_idempotent

pytestmark = pytest.mark.provisioned  # e2e hosts: packages preinstalled (tests/provisioned.py)

APP = {"name": "app", "container": "watchme-app", "ip": "172.27.0.40", "port": 8040,
       "memory_limit": "48m"}
DYN = {"name": "dyn", "container": "watchme-dyn", "ip": None, "port": 8041, "memory_limit": "40m"}
SITE = "/opt/watchme/nginx/api.hey-watch.me"
PINS = "/var/lib/watchme/image-pins.json"
CANDIDATE = "watchme-app-candidate"
DYNAMIC = "172.27.255."  # the dynamic range of 172.27.0.0/16 (settings.default_range)
NO_ROOM = ["--data", "host_memory_mib=100000000", "--data", "memory_os_reserve_mib=90000000"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, testhost_env):
    reg = fake_services.registry(tmp_path_factory.mktemp("reg") / "r.yaml", [APP, DYN])
    return {**testhost_env, "WATCHME_REGISTRY": reg}


@pytest.fixture(scope="module")
def live(deploy, env, host):
    first = deploy(env=env)  # a new server: Docker and the network, no compose files yet
    assert first.rc == 0, first.stderr[-3000:]
    ri.setup_registry(host)
    for v in ("v1", "v2", "v2a", "v2b"):
        ri.build_and_push(host, "app", v)
    fake_services._run(host, f"docker tag {ri.REGISTRY}/app:v1 {ri.REGISTRY}/app:live && "
                             f"docker push {ri.REGISTRY}/app:live >/dev/null")
    ri.install_compose(host, "app", ri.compose("app", APP["container"], APP["port"],
                                               f"{ri.REGISTRY}/app:live"), APP["port"])
    ri.install_compose(host, "dyn", ri.compose("dyn", DYN["container"], DYN["port"],
                                               f"{ri.REGISTRY}/app:v1"), DYN["port"])
    second = deploy(env=env)
    assert second.rc == 0, second.stderr[-3000:]
    wait_answer(host, "v1")
    return second


def page(host) -> str:
    # As a client reaches it: the test host serves HTTPS (self-signed), :80 only redirects.
    r = host.run("curl -sk -m 3 --resolve api.hey-watch.me:443:127.0.0.1 https://api.hey-watch.me/app/")
    return r.stdout.strip()


def wait_answer(host, text: str, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if page(host) == text:
            return
        time.sleep(1)
    raise AssertionError(f"route /app/ never answered {text!r} (last: {page(host)!r})")


def inspect(host, container: str) -> dict:
    return json.loads(host.check_output(f"docker inspect {container}"))[0]


def exists(host, container: str) -> bool:
    return host.run(f"docker inspect {container}").rc == 0


# One line per answer: an error page's lines are joined and cut (it counts as a failure).
PROBE_LOOP = ("while [ -e {on} ]; do a=$(curl -sk -m 3 --resolve api.hey-watch.me:443:127.0.0.1 "
              "https://api.hey-watch.me/app/ | tr -s \"\\n\" \" \" | cut -c1-60); "
              "echo \"$(date +%s.%N) ${{a:-none}}\" >> {out}; sleep 0.2; done")


@contextmanager
def probing(host, candidate: list | None = None):
    """A client on the host asking the route every 0.2 s (a loop on the host itself, so SSH
    latency never thins it out); yields the list of answers, filled when the block ends. If
    asked, also records the candidate container as first seen."""
    on, out = "/run/watchme-test-probing", "/run/watchme-test-probes"
    fake_services._run(host, f"rm -f {out}; touch {on}; nohup sh -c '{PROBE_LOOP.format(on=on, out=out)}' "
                             ">/dev/null 2>&1 &")
    seen: list[str] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set() and not candidate:
            if exists(host, CANDIDATE):
                candidate.append(inspect(host, CANDIDATE))
            time.sleep(0.2)

    t = threading.Thread(target=watch) if candidate is not None else None
    if t:
        t.start()
    try:
        yield seen
    finally:
        stop.set()
        if t:
            t.join()
        fake_services._run(host, f"rm -f {on}; sleep 3.5")  # the last probe ends (-m 3)
        lines = host.check_output(f"cat {out}").splitlines()
        seen.extend(line.partition(" ")[2].strip() or "none" for line in lines)
        span = float(lines[-1].split()[0]) - float(lines[0].split()[0]) if lines else 0.0
        print(f"probes: {len(lines)} in {span:.1f} s, {len(failures(seen))} failed")


def failures(seen: list[str]) -> list[str]:
    return [a for a in seen if a not in ("v1", "v2")]


def rollout(env, *args: str) -> tuple[int, dict]:
    p = subprocess.run([WATCHME, "rollout", "app", "--json", "--timeout", "25", *args],
                       cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=600)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    assert lines, p.stdout + p.stderr
    return p.returncode, json.loads(lines[-1])


def test_limits_and_ips_are_the_registrys(live, host):
    for s in (APP, DYN):
        c = inspect(host, s["container"])
        assert c["HostConfig"]["Memory"] == int(s["memory_limit"][:-1]) * 1024 * 1024
    net = inspect(host, APP["container"])["NetworkSettings"]["Networks"]["watchme-network"]
    assert net["IPAddress"] == APP["ip"]
    assert net["IPAMConfig"]["IPv4Address"] == APP["ip"]


def test_a_restart_keeps_the_ip(live, host):
    fake_services._run(host, "systemctl restart watchme-app.service")  # Service.unit default
    end = time.monotonic() + 60
    while time.monotonic() < end:
        c = inspect(host, APP["container"]) if exists(host, APP["container"]) else {}
        if c and c["State"]["Running"]:
            break
        time.sleep(1)
    assert c["NetworkSettings"]["Networks"]["watchme-network"]["IPAddress"] == APP["ip"]
    wait_answer(host, "v1")


@pytest.mark.parametrize("bad", ["v2a", "v2b"])
def test_a_bad_image_is_rejected_before_clients_see_it(live, host, env, bad):
    before = inspect(host, APP["container"])
    site = host.check_output(f"cat {SITE}")
    override = host.check_output("cat /opt/watchme/compose/app.override.yml")
    with probing(host) as seen:
        rc, res = rollout(env, "--image", f"{ri.REGISTRY}/app:{bad}")
    assert (rc, res["status"], res["mode"]) == (1, "rejected", "candidate"), res
    assert ("candidate exited" in res["failed"]) if bad == "v2a" else ("answered 500" in res["failed"])
    assert res["candidate"]["address"].startswith(DYNAMIC)
    print(f"{bad}: {len(seen)} probes, {len(failures(seen))} failed")
    assert seen and set(seen) == {"v1"}, seen  # v1 throughout: zero failures, never the bad one
    after = inspect(host, APP["container"])  # the live container: not restarted, same image
    assert (after["Id"], after["Image"], after["State"]["StartedAt"]) == \
        (before["Id"], before["Image"], before["State"]["StartedAt"])
    assert host.check_output(f"cat {SITE}") == site  # Nginx never switched
    assert host.check_output("cat /opt/watchme/compose/app.override.yml") == override  # no pin
    assert not exists(host, CANDIDATE)


def test_good_v2_goes_live_with_zero_failed_probes(live, host, env):
    site = host.check_output(f"cat {SITE}")
    cand: list = []
    with probing(host, cand) as seen:
        rc, res = rollout(env, "--image", f"{ri.REGISTRY}/app:v2")
    assert (rc, res["status"], res["mode"]) == (0, "live", "candidate"), res
    print(f"good rollout: {len(seen)} probes, {len(failures(seen))} failed")
    assert failures(seen) == [], seen
    assert seen[0] == "v1" and seen[-1] == "v2" and "v1" not in seen[seen.index("v2"):], seen
    assert page(host) == "v2"
    # The candidate: the registry's memory limit, the label, an address of the dynamic range.
    assert cand, "the candidate container was never seen"
    c = cand[0]
    assert c["HostConfig"]["Memory"] == 48 * 1024 * 1024
    assert c["Config"]["Labels"]["watchme.rollout-candidate"] == "app"
    assert c["NetworkSettings"]["Networks"]["watchme-network"]["IPAddress"].startswith(DYNAMIC)
    assert "PORT=8040" in c["Config"]["Env"]  # from the env_file, through compose
    assert not exists(host, CANDIDATE)
    # The fixed-IP container runs v2 with its limit and IP; the site is the deploy's again.
    fixed = inspect(host, APP["container"])
    assert fixed["HostConfig"]["Memory"] == 48 * 1024 * 1024
    assert fixed["NetworkSettings"]["Networks"]["watchme-network"]["IPAddress"] == APP["ip"]
    assert host.check_output(f"cat {SITE}") == site
    record = json.loads(host.check_output("cat /var/lib/watchme/rollouts.json"))
    assert record[-1]["status"] == "live" and record[-1]["previous"]["pin"]


def test_no_room_for_a_second_copy_restarts_in_place(live, host, env):
    with probing(host) as seen:
        rc, res = rollout(env, "--image", f"{ri.REGISTRY}/app:v1", *NO_ROOM)
    assert (rc, res["status"], res["mode"]) == (0, "live", "in_place"), res
    assert "MemAvailable" in res["reason"] and "memory_os_reserve_mib" in res["reason"]
    assert "candidate" not in res and not exists(host, CANDIDATE)
    print(f"in place: {len(failures(seen))} of {len(seen)} probes failed (the restart)")
    assert page(host) == "v1"


def kill_after_switch(host, env, image: str) -> None:
    """Start a rollout of image and SIGKILL it once Nginx routes to its candidate and the
    image is pinned: the unit is restarting (the state that needs the most repair)."""
    p = subprocess.Popen([WATCHME, "rollout", "app", "--json", "--image", image],
                         cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    end = time.monotonic() + 300
    while not (DYNAMIC in host.check_output(f"cat {SITE}")
               and image in host.check_output(f"cat {PINS}")):
        assert p.poll() is None and time.monotonic() < end, "the rollout never switched Nginx"
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert exists(host, CANDIDATE)


def test_a_killed_rollout_is_repaired_by_the_next_deploy(live, host, env, deploy):
    site = host.check_output(f"cat {SITE}")
    with probing(host) as seen:
        kill_after_switch(host, env, f"{ri.REGISTRY}/app:v2")
        repaired = deploy(env=env)
    assert repaired.rc == 0, repaired.stderr[-3000:]
    assert failures(seen) == [], seen
    assert host.check_output(f"cat {SITE}") == site  # the registry's render again
    assert not exists(host, CANDIDATE)
    wait_answer(host, "v2", 60)  # the pin the killed rollout wrote, rendered back by the deploy


def test_a_new_rollout_cleans_a_killed_ones_leftover_first(live, host, env):
    site = host.check_output(f"cat {SITE}")
    with probing(host) as seen:
        kill_after_switch(host, env, f"{ri.REGISTRY}/app:v2")
        # No --image: compose pull of the compose file's tag (app:live is v1), the pin cleared.
        rc, res = rollout(env)
    assert (rc, res["status"], res["mode"]) == (0, "live", "candidate"), res
    assert res["cleaned"] == [CANDIDATE]
    assert failures(seen) == [], seen
    assert host.check_output(f"cat {SITE}") == site and not exists(host, CANDIDATE)
    assert "app" not in json.loads(host.check_output(f"cat {PINS}"))
    assert page(host) == "v1"


def test_rollout_of_an_unknown_service_is_refused(env):
    p = subprocess.run([WATCHME, "rollout", "nope"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=300)
    assert p.returncode == 2 and "no service 'nope'" in p.stderr


def test_idempotent_after_rollouts(live, deploy, env):
    assert_idempotent(deploy, env=env)
