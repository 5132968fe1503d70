"""Adoption, end to end (issue 11 §5): the FIRST deploy against the seed's real server is safe.

On the production replica (tests/replica/): `watchme import` writes the registry, and the
deploy with that registry runs while a probe loop on the host requests every live route
(HTTPS with SNI, and the :80 redirect) every 100 ms. Proven: zero failed requests, no
container restarted, every route answers from the same upstream path, the extra locations
still answer, the same certificate, the clone untouched, one guard, nothing pointing into the
clone, and a second run changes nothing. First, a location nothing can express makes the
import fail and the deploy stop before any change.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests import replica
from tests.conftest import assert_idempotent
from tests.replica.fixture import testhost  # noqa: F401  (this module's host is a replica)
from watchme.registry import load_data

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
SERVICES = replica.services()
CLONE = replica.CLONE
SITE_FILE = f"{CLONE}/sites-available/{replica.SITE}"
PHP = "    location ~ \\.php$ {\n        fastcgi_pass 127.0.0.1:9000;\n    }\n"
PROBE_DIR = "/root/adoption-probe"
STATE: dict = {}  # shared between the ordered tests of this module

# The probe loop, on the host: each round requests every line of the list at once (one curl
# each, fresh connections), logs one line per request, then sleeps 100 ms.
PROBE_SCRIPT = r"""#!/bin/bash
list=$1 stop=$2 log=$3
while [ ! -e "$stop" ]; do
    while IFS='|' read -r url code body; do
        (
            out=$(curl -sk --max-time 5 --resolve SITE:443:127.0.0.1 --resolve SITE:80:127.0.0.1 \
                  -w '\n%{http_code}' "$url" 2>&1)
            got=${out##*$'\n'}; text=${out%$'\n'*}; text=${text%$'\n'}
            if [ "$got" = "$code" ] && { [ -z "$body" ] || [ "$text" = "$body" ]; }; then
                echo "ok $url"
            else
                echo "FAIL $(date +%T.%N) $url got=$got ${text:0:120}"
            fi
        ) >> "$log" &
    done < "$list"
    wait
    sleep 0.1
done
""".replace("SITE", replica.SITE)


def expected_routes() -> list[tuple[str, str, str]]:
    """(url, status, body) for every live route, the extra locations and the :80 redirect."""
    out = [(f"https://{replica.SITE}{s.public_path}", "200", s.answer) for s in SERVICES]
    out += [(f"https://{replica.SITE}{p}", "200", answer) for p, answer in replica.EXTRA_ROUTES.items()]
    out.append((f"http://{replica.SITE}/scheduler/x", "301", ""))
    return out


def sh(host, command: str) -> str:
    r = host.run(command)
    assert r.rc == 0, f"{command}: {r.stdout}{r.stderr}"
    return r.stdout.strip()


def started_at(host) -> dict[str, str]:
    lines = sh(host, "docker inspect -f '{{.Name}} {{.State.StartedAt}} {{.RestartCount}}' "
                     "$(docker ps -aq)").splitlines()
    return {l.split()[0].lstrip("/"): " ".join(l.split()[1:]) for l in lines}


def fingerprint(host) -> str:
    return sh(host, f"echo | openssl s_client -connect 127.0.0.1:443 -servername {replica.SITE} "
                    "2>/dev/null | openssl x509 -noout -fingerprint -sha256")


def clone_state(host) -> dict[str, str]:
    git = f"sudo -u ubuntu git -C {CLONE}"
    return {
        "status": sh(host, f"{git} status --porcelain --ignored"),
        "head": sh(host, f"{git} rev-parse HEAD"),
        "not_ubuntu": sh(host, f"find {CLONE} ! -user ubuntu"),
        "owner": sh(host, f"stat -c %U:%G {CLONE}"),
        "files": sh(host, f"find {CLONE} -path {CLONE}/.git -prune -o -print | sort | md5sum"),
    }


def answers(host) -> dict[str, tuple[str, str]]:
    """What each route answers through Nginx now: (status, body)."""
    out = {}
    for url, _, _ in expected_routes():
        scheme = url.split(":")[0]
        path = url.split(replica.SITE, 1)[1]
        if scheme == "http":  # the redirect: its status and where it sends the client
            r = host.run(f"curl -s -o /dev/null -w '%{{http_code}} %{{redirect_url}}' "
                         f"--resolve {replica.SITE}:80:127.0.0.1 {shlex.quote(url)}")
            out[url] = tuple(r.stdout.split(" ", 1))
            continue
        r = host.run(replica.curl_command(path, scheme))
        body, _, code = r.stdout.rpartition("\n")
        out[url] = (code, body.strip())
    return out


def host_snapshot(host) -> str:
    """What a stopped deploy must not have changed."""
    return sh(host, (
        "nginx -T 2>/dev/null | md5sum; systemctl list-unit-files 'watchme-*' --no-legend | md5sum; "
        "ls -la --time-style=full-iso /etc/nginx/sites-available /etc/nginx/sites-enabled "
        "/etc/systemd/system | md5sum; crontab -l -u ubuntu; "
        "ls -d /opt/watchme /var/lib/watchme 2>&1 | sort; "
        f"sudo -u ubuntu git -C {CLONE} status --porcelain"))


def run_import(testhost_env: dict, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHME_")}
    env.update(testhost_env)
    return subprocess.run([sys.executable, "-m", "watchme", "import", "--output", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------------ a broken import stops

def test_a_location_nothing_can_express_fails_the_import_and_stops_the_deploy(
        host, testhost_env, deploy, tmp_path_factory):
    STATE["started"] = started_at(host)
    STATE["clone"] = clone_state(host)
    tmp = tmp_path_factory.mktemp("broken")
    # The operator's way (seed section 2): edit the clone's site, nginx -t, reload.
    marker = "    listen 443 ssl http2;"
    edit = (f"import pathlib; p = pathlib.Path({SITE_FILE!r}); "
            f"p.write_text(p.read_text().replace({marker!r}, {PHP + marker!r}, 1))")
    sh(host, f"sudo -u ubuntu python3 -c {shlex.quote(edit)} && nginx -t 2>&1 && "
             "systemctl reload nginx")
    try:
        imported = tmp / "imported.yaml"
        p = run_import(testhost_env, imported)
        assert p.returncode == 2, p.stderr
        assert "not expressed: location ~ \\.php$: regex match" in p.stderr
        assert "not an extra location either" in p.stderr
        reg = load_data(yaml.safe_load(imported.read_text()))
        assert {x.location for x in reg.extra_locations} == {"= /health", "/status/"}

        before = host_snapshot(host)
        run = deploy(env={"WATCHME_REGISTRY": str(imported)})
        assert run.rc != 0
        assert "the live site serves location(s) the registry does not have: ~ \\.php$" \
            in run.stderr + run.stdout
        assert "Nothing was changed" in run.stderr + run.stdout
        assert host_snapshot(host) == before
        assert started_at(host) == STATE["started"]
    finally:
        # The operator resolves it: the hand edit is reverted in the clone, as git keeps it.
        sh(host, f"sudo -u ubuntu git -C {CLONE} checkout -- . && nginx -t 2>&1 && "
                 "systemctl reload nginx")
    assert clone_state(host) == STATE["clone"]


# ------------------------------------------------------------------ the adoption itself

def test_import_reproduces_every_route_and_keeps_the_extra_locations(host, testhost_env,
                                                                     tmp_path_factory):
    out = tmp_path_factory.mktemp("adopt") / "imported.yaml"
    p = run_import(testhost_env, out)
    assert p.returncode == 0, p.stderr  # nothing left that the registry cannot carry
    reg = load_data(yaml.safe_load(out.read_text()))
    routes = {s.public_path: (s.port, s.upstream_path, s.container, s.unit) for s in reg.services}
    assert routes == {s.public_path: (s.port, s.upstream_path, s.container, f"{s.unit}.service")
                      for s in SERVICES}
    assert [x.location for x in reg.extra_locations] == ["= /health", "/status/"]
    STATE["registry"] = str(out)


def test_adoption_deploy_serves_every_request_and_restarts_nothing(host, deploy):
    assert "registry" in STATE, "the import test must run first"
    STATE["answers"] = answers(host)
    assert all(code in ("200", "301") for code, _ in STATE["answers"].values()), STATE["answers"]
    STATE["fingerprint"] = fingerprint(host)
    STATE["started"] = started_at(host)
    assert len([n for n in STATE["started"] if n != "watchme-avatar-uploader"]) >= 13
    listing = "\n".join("|".join(r) for r in expected_routes()) + "\n"
    sh(host, f"rm -rf {PROBE_DIR} && mkdir -p {PROBE_DIR} && "
             f"printf %s {shlex.quote(listing)} > {PROBE_DIR}/routes && "
             f"printf %s {shlex.quote(PROBE_SCRIPT)} > {PROBE_DIR}/probe.sh")
    sh(host, f"setsid nohup bash {PROBE_DIR}/probe.sh {PROBE_DIR}/routes {PROBE_DIR}/stop "
             f"{PROBE_DIR}/log > /dev/null 2>&1 < /dev/null &")
    time.sleep(2)  # the loop runs before the deploy starts
    t0 = time.monotonic()
    run = deploy(env={"WATCHME_REGISTRY": STATE["registry"]})
    STATE["deploy_seconds"] = time.monotonic() - t0
    time.sleep(2)  # and after it ends
    sh(host, f"touch {PROBE_DIR}/stop; sleep 1")
    log = sh(host, f"cat {PROBE_DIR}/log")
    assert run.rc == 0, run.stderr[-4000:]
    lines = log.splitlines()
    failures = [l for l in lines if not l.startswith("ok ")]
    STATE["probe"] = {"requests": len(lines), "failures": len(failures)}
    print(f"\nadoption deploy: {STATE['deploy_seconds']:.0f}s, {len(run.changed())} changed "
          f"operations; probe: {len(lines)} requests, {len(failures)} failed")
    assert len(lines) >= 20 * len(expected_routes()), "the probe loop barely ran"
    assert failures == [], "\n".join(failures[:30])

    after = started_at(host)
    restarted = {n: (STATE["started"][n], after.get(n)) for n in STATE["started"]
                 if after.get(n) != STATE["started"][n]}
    assert restarted == {}, restarted
    assert answers(host) == STATE["answers"]
    assert fingerprint(host) == STATE["fingerprint"]


def test_the_clone_is_untouched_and_nothing_points_into_it(host):
    assert clone_state(host) == STATE["clone"]
    assert STATE["clone"]["owner"] == "ubuntu:ubuntu" and STATE["clone"]["not_ubuntu"] == ""
    into_clone = sh(host, "find /etc/systemd /etc/nginx -exec readlink -f {} + | "
                          f"grep -F {CLONE}/ || true")
    assert into_clone == ""
    fragments = sh(host, "systemctl show -p FragmentPath --value 'watchme-*' nginx | sort -u")
    assert CLONE not in fragments
    tabs = sh(host, "crontab -l -u ubuntu 2>/dev/null; crontab -l -u root 2>/dev/null; true")
    assert CLONE not in tabs


def test_exactly_one_guard_remains(host):
    assert sh(host, "systemctl is-active watchme-guard.timer") == "active"
    assert "check-infrastructure" not in sh(host, "crontab -l -u ubuntu 2>/dev/null; true")
    backups = sh(host, "ls /opt/watchme/backups/").split()
    kept = [b for b in backups if b.startswith("var_spool_cron_crontabs_ubuntu.backup.")]
    assert len(kept) == 1, backups
    assert f"*/5 * * * * {CLONE}/scripts/check-infrastructure.sh" in \
        sh(host, f"cat /opt/watchme/backups/{kept[0]}")


def test_second_run_changes_nothing(deploy):
    assert_idempotent(deploy, env={"WATCHME_REGISTRY": STATE["registry"]})
