"""Fault injection (issue 10 §4): a deploy killed anywhere is finished by the next run.

One test host, two registries A and B that differ in every concern the deploy owns: a unit's
Description (alpha), a service's memory limit and fixed IP (beta's compose override, the
guard's members), the Nginx site (alpha's client_max_body_size, the new route /gamma/ of a new
service with its own unit), and the guard timer's interval (--data guard_interval). The host
converges to A, then each kill point is a real change run, alternately A->B and B->A: the run is
killed when pyinfra starts the point's operation (optionally a moment later), by SIGKILL of
pyinfra or by cutting its SSH connection (pyinfra reaches the host through
/work/shared/tools/latency-proxy.py, which is killed). The next normal run must succeed and
end where an uninterrupted run ends: the same files (config_root and the /etc links) and the
same state *running* (the unit Description systemd loaded, the memory Docker applied, the
timer interval systemd loaded, the body-size limit and routes Nginx answers, no unit waiting
for daemon-reload). Nginx must answer a probe every 100 ms throughout (the killed run and the
recovery), and the network check must find every member on watchme-network.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import fake_services
from tests.conftest import PYINFRA, ROOT, assert_idempotent

pytestmark = [pytest.mark.e2e, pytest.mark.provisioned]  # packages preinstalled (tests/provisioned.py)

PROXY = "/work/shared/tools/latency-proxy.py"
VHOST = "api.hey-watch.me"
CONFIG_ROOT = "/opt/watchme"
UNITS = ("watchme-alpha.service", "watchme-beta.service", "watchme-gamma.service",
         "watchme-infrastructure.service", "watchme-guard.service", "watchme-guard.timer")
BODY = 2 * 1024 * 1024  # over A's 1m limit, under B's 4m

ALPHA = {"name": "alpha", "container": "watchme-alpha", "ip": "172.27.0.6", "port": 8000, "priority": 1}
BETA = {"name": "beta", "container": "watchme-beta", "ip": "172.27.0.7", "port": 8001}
GAMMA = {"name": "gamma", "container": "watchme-gamma", "ip": "172.27.0.8", "port": 8002}
STATES = {
    "A": ([ALPHA, BETA], "5min"),
    "B": ([{**ALPHA, "description": "Test service alpha, version B", "max_body_size": "4m"},
           {**BETA, "memory_limit": "48m", "ip": "172.27.0.9"}, GAMMA], "7min"),
}

# (target state, operation whose start triggers the kill, seconds after it, how).
# Spread from the first change of each direction to its last; "cut" = the SSH connection.
POINTS = [
    ("A", "Docker network", 0, "kill"),  # every rendered file (beta's override too) written, units not
    ("B", "Write the rendered files", 0.3, "cut"),  # cut in the middle of the bundle install
    ("A", "Remove unit file /opt/watchme/systemd/watchme-gamma.service", 0, "cut"),
    ("B", "Reload systemd (a unit changed)", 0, "kill"),  # unit files written, never loaded
    ("A", "Enable and start watchme-infrastructure.service and the services", 1.0, "kill"),  # mid-restarts
    ("B", "Apply nginx site", 0, "cut"),  # site file written and linked, not applied
    ("A", "Apply nginx site", 1.0, "kill"),  # in the middle of nginx-safe-apply
    ("B", "Reload systemd (a guard unit changed)", 0, "cut"),  # timer written, not loaded
    ("A", "Enable and start watchme-guard.timer", 0, "cut"),
    ("B", "Network monitor --fix", 0, "kill"),
    ("A", "Release the deploy lock", 0, "kill"),
]


def _args(state: str) -> list[str]:
    return ["--data", "allow_route_removal=true", "--data", f"guard_interval={STATES[state][1]}"]


def sh(host, cmd: str) -> str:
    r = host.run(cmd)
    assert r.rc == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return r.stdout.strip()


def files_state(host) -> str:
    """Every file the deploy owns (backups and bytecode aside) with its checksum, the
    records of what Nginx last applied, and every link under /etc/systemd/system and /etc/nginx."""
    return sh(host,
              f"cd {CONFIG_ROOT} && find . -xdev \\( -type f -o -type l \\) -not -path './nginx/backups/*' "
              "-not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum; "
              "sha256sum /var/lib/watchme/nginx-applied.sha256 /var/lib/watchme/nginx-known-good.conf; "
              "find /etc/systemd/system /etc/nginx -type l -printf '%p -> %l\\n' | sort")


def _code(host, path: str, *curl: str) -> str:
    return sh(host, f"curl -sk -m 10 -o /dev/null -w '%{{http_code}}' --resolve {VHOST}:443:127.0.0.1 "
                    f"{' '.join(curl)} https://{VHOST}{path}")


def _body_limit(code: str) -> str:
    """A 2 MiB POST: 413 while client_max_body_size is 1m; under 4m Nginx passes it to alpha,
    whose busybox httpd answers 501 (or resets before reading it all: 502)."""
    assert code != "000", "Nginx did not answer"
    return "refused 413" if code == "413" else "passed to alpha"


def running_state(host) -> dict:
    """What systemd, Docker and Nginx actually run, not what the files say."""
    show = sh(host, "systemctl show -p Id -p NeedDaemonReload -p ActiveState -- " + " ".join(UNITS))
    units = {}
    for block in show.split("\n\n"):
        kv = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        # The guard service is a oneshot: its state is its last check's result, not the deploy's.
        active = None if kv["Id"] == "watchme-guard.service" else kv["ActiveState"]
        units[kv["Id"]] = (active, kv["NeedDaemonReload"])
    timer = sh(host, "systemctl show -p TimersMonotonic watchme-guard.timer")
    memory, ip = sh(host, "docker inspect -f '{{.HostConfig.Memory}} {{(index .NetworkSettings.Networks "
                          "\"watchme-network\").IPAddress}}' watchme-beta").split()
    gamma = host.run("docker inspect -f '{{.State.Status}}' watchme-gamma").stdout.strip() or "absent"
    return {
        "units": units,
        "alpha description": sh(host, "systemctl show -p Description --value watchme-alpha.service"),
        "timer interval": re.search(r"OnUnitActiveUSec=(\S+)", timer).group(1),
        "beta memory": int(memory), "beta ip": ip, "gamma container": gamma,
        "body 2MiB": _body_limit(_code(host, "/alpha/", "-X POST", "--data-binary @/var/tmp/faults-body")),
        "/gamma/": _code(host, "/gamma/"),
    }


def network_check(host) -> tuple[int, str]:
    r = host.run(f"python3 {CONFIG_ROOT}/scripts/network_monitor.py "
                 f"--members {CONFIG_ROOT}/monitor/members.json --check --json")
    return r.rc, r.stdout


# curl waits longer than Nginx's own upstream connect timeout (5 s): a restarting upstream then
# shows as Nginx's 502/504 answer, and "000" only when Nginx itself did not answer. One line per
# probe: start (epoch), curl's exit code, HTTP code, seconds taken.
PROBE = (f"while [ ! -e /var/tmp/faults-probe.stop ]; do "
         f"t=$(date +%s.%N); r=$(curl -sk -m 8 -o /dev/null -w '%{{http_code}} %{{time_total}}' "
         f"--resolve {VHOST}:443:127.0.0.1 https://{VHOST}/alpha/); "
         f"echo \"$t $? $r\" >> /var/tmp/faults-probe.log; sleep 0.1; done")
# What Nginx itself logged of each request, with its own times: an unanswered probe is then
# either a request Nginx held (rt= the time it took, uct/urt the upstream's share) or one it
# never logged. In conf.d, which the deploy does not own; the test host only.
TIMED_LOG = "/var/log/nginx/faults-timed.log"
TIMED_CONF = ("log_format faults_timed '$msec $status rt=$request_time uct=$upstream_connect_time "
              "urt=$upstream_response_time ua=$upstream_addr us=$upstream_status $request_uri';\n"
              f"access_log {TIMED_LOG} faults_timed;\n")


def nginx_timed_log(host) -> None:
    sh(host, f"printf {shlex.quote(TIMED_CONF)} > /etc/nginx/conf.d/faults-timed.conf && "
             "nginx -t -q && systemctl reload nginx")


def probe_start(host) -> None:
    sh(host, "rm -f /var/tmp/faults-probe.stop /var/tmp/faults-probe.log; "
             "systemctl reset-failed faults-probe 2>/dev/null; "
             f"systemd-run --unit faults-probe sh -c {shlex.quote(PROBE)}")


def probe_stop(host) -> list[tuple[float, int, str, float]]:
    """(start, curl exit code, HTTP code, seconds) of every probe."""
    sh(host, "touch /var/tmp/faults-probe.stop; "
             "while systemctl is-active -q faults-probe; do sleep 0.1; done")
    return [(float(t), int(rc), code, float(secs)) for t, rc, code, secs in
            (line.split() for line in sh(host, "cat /var/tmp/faults-probe.log").splitlines())]


def unanswered(host, probes) -> str:
    """Each unanswered probe with curl's exit code (28: nothing within 8 s; 7: refused;
    35, 52, 56: the connection closed) and what Nginx logged from 1 s before it to 10 s after."""
    timed = [line.split(" ", 1) for line in host.run(f"cat {TIMED_LOG}").stdout.splitlines()]
    out = []
    for start, rc, _, secs in (p for p in probes if p[2] == "000"):
        out.append(f"probe at {start:.3f}: curl exit {rc} after {secs:.3f}s; Nginx logged:")
        out += [f"  {t} {rest}" for t, rest in timed if start - 1 <= float(t) <= start + 10]
    return "\n".join(out + ["error.log:", host.run("tail -n 20 /var/log/nginx/error.log").stdout])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _through_proxy(testhost, tmp: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    """A latency proxy (1 ms) in front of the host's SSH port, and a state file for it."""
    port = _free_port()
    proxy = subprocess.Popen([sys.executable, PROXY, str(port), str(testhost.port), "1",
                              "--seconds", "300"], start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    key_line = Path(testhost.known_hosts).read_text().split(" ", 1)[1]
    known = tmp / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {key_line}")
    state = tmp / "host.json"
    state.write_text(json.dumps({"name": testhost.name, "port": port, "user": testhost.user,
                                 "key": testhost.key, "known_hosts": str(known)}))
    return proxy, {"WATCHME_TESTHOST": str(state)}


def killed_run(env: dict[str, str], registry: Path, state: str, trigger: str, delay: float,
               how: str, testhost, tmp: Path) -> list[str]:
    """Run the deploy to `state` (plain output, streamed) and kill it when `trigger` starts.
    Returns its stderr lines."""
    proxy = None
    if how == "cut":
        proxy, env = _through_proxy(testhost, tmp)
    full = {k: v for k, v in os.environ.items() if not k.startswith("WATCHME_")}
    full.update(env)
    full.update({"WATCHME_REGISTRY": str(registry), "PYTHONUNBUFFERED": "1"})
    p = subprocess.Popen([PYINFRA, "-y", *_args(state), "inventory.py", "deploy.py"], cwd=ROOT,
                         env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines, hit = [], False
    debug_log = ROOT / "pyinfra-debug.log"  # pyinfra writes it into the cwd on a lost connection
    had_debug_log = debug_log.exists()
    try:
        for line in p.stderr:
            lines.append(line)
            if line.startswith(f"--> Starting operation: {trigger}"):
                hit = True
                time.sleep(delay)
                if how == "kill":
                    p.send_signal(signal.SIGKILL)
                else:
                    proxy.send_signal(signal.SIGKILL)
                break
        p.wait(timeout=120)  # what pyinfra prints after a cut is far less than a pipe holds
        lines += p.stderr.read().splitlines(keepends=True)
    finally:
        for proc in (p, proxy):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if not had_debug_log:
            debug_log.unlink(missing_ok=True)
    assert hit, f"{trigger!r} never started:\n{''.join(lines[-40:])}"
    assert p.returncode != 0, f"the run was not interrupted at {trigger!r}"
    return lines


@pytest.fixture(scope="module")
def registries(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("faults")
    for name, (services, _) in STATES.items():
        fake_services.registry(d / f"{name}.yaml", services)
    return d


def to(deploy, registries: Path, state: str):
    # As CI runs it: a killed run's remote work (e.g. its restarts, holding the work lock)
    # may still be running on the host; the next deploy waits for it instead of failing.
    return deploy(*_args(state), "--data", "lock_wait_seconds=300",
                  env={"WATCHME_REGISTRY": str(registries / f"{state}.yaml")})


@pytest.fixture(scope="module")
def references(deploy, host, registries) -> dict:
    """Converge to A (bootstrap, then with the services' compose files), then one
    uninterrupted run to B: the end states every recovery must reach."""
    first = to(deploy, registries, "A")
    assert first.rc == 0, first.stderr[-3000:]
    fake_services.install(host, [ALPHA, BETA, GAMMA])
    sh(host, f"head -c {BODY} /dev/zero > /var/tmp/faults-body")
    nginx_timed_log(host)
    refs = {}
    for state in ("A", "B"):
        run = to(deploy, registries, state)
        assert run.rc == 0, run.stderr[-3000:]
        fake_services.wait(host, "curl -sf http://127.0.0.1:8000/ | grep -qx alpha")
        refs[state] = {"files": files_state(host), "running": running_state(host)}
    a, b = refs["A"]["running"], refs["B"]["running"]
    # The two states differ in every concern, as the host runs them.
    assert (a["body 2MiB"], b["body 2MiB"]) == ("refused 413", "passed to alpha"), (a, b)
    assert (a["/gamma/"], b["/gamma/"]) == ("404", "200"), (a, b)
    assert a["alpha description"] != b["alpha description"]
    assert (a["beta memory"], b["beta memory"]) == (32 << 20, 48 << 20)
    assert (a["beta ip"], b["beta ip"]) == ("172.27.0.7", "172.27.0.9")
    assert (a["timer interval"], b["timer interval"]) == ("5min", "7min")
    assert a["gamma container"] == "absent" and b["gamma container"] == "running"
    return refs


REPORT: list[str] = []


@pytest.mark.parametrize("state, trigger, delay, how", POINTS,
                         ids=[f"{i:02d}-{v[3]}-to{v[0]}-{v[1][:30]}" for i, v in enumerate(POINTS)])
def test_killed_deploy_is_finished_by_the_next_run(references, deploy, host, testhost, testhost_env,
                                                   registries, tmp_path, state, trigger, delay, how):
    other = "B" if state == "A" else "A"
    if running_state(host) != references[other]["running"]:  # a point before failed: start clean
        assert to(deploy, registries, other).rc == 0
    probe_start(host)
    started = time.monotonic()
    killed = killed_run(testhost_env, registries / f"{state}.yaml", state, trigger, delay, how,
                        testhost, tmp_path)
    recovery = to(deploy, registries, state)
    probes = probe_stop(host)
    codes = [code for _, _, code, _ in probes]
    REPORT.append(f"{how:4} ->{state} at {trigger!r} (+{delay}s): recovery rc={recovery.rc} "
                  f"changed={recovery.changed() if recovery.rc == 0 else '?'}; "
                  f"probes={len(codes)} failed={codes.count('000')} "
                  f"slowest={max((p[3] for p in probes), default=0):.1f}s; "
                  f"{time.monotonic() - started:.0f}s")
    assert recovery.rc == 0, "".join(killed[-20:]) + recovery.stderr[-3000:]
    fake_services.wait(host, "curl -sf http://127.0.0.1:8000/ | grep -qx alpha")
    assert running_state(host) == references[state]["running"]
    assert files_state(host) == references[state]["files"]
    rc, report = network_check(host)
    assert rc == 0, report
    assert codes and codes.count("000") == 0, \
        f"Nginx did not answer {codes.count('000')} of {len(codes)} probes:\n{unanswered(host, probes)}"


def test_second_run_changes_nothing(references, deploy, registries):
    print("\n".join(REPORT), file=sys.stderr)
    state = POINTS[-1][0]
    assert_idempotent(lambda: to(deploy, registries, state))
