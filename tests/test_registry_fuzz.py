"""Property-based tests of the registry (issue 10 §2): for generated registries, loading either
fails with a RegistryError naming the field, or what is rendered from it is valid for the real
programs and no generated value ever executes.

The generator mixes valid values with hostile ones (`$(touch /tmp/pwned)`, backticks, quotes,
${IFS}, \\r, Unicode line separators, link-local hosts, floats for ports, ...). The end-to-end
test collects the registries that load, renders the site and the units with the project's
templates through pyinfra's own Jinja environment, and checks them all in ONE test host in one
batch: `nginx -t` per site, `systemd-analyze verify` per unit, the units loaded by systemd
(their Description as written, no ExecStartPre smuggled in), and every accepted probe path and
compose file used unquoted in a shell. The canary /tmp/pwned never appears.
"""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from pyinfra.api.util import get_template

from watchme import nginx
from watchme.images import override_path
from watchme.registry import RegistryError, Service, load_data
from watchme.settings import Settings, control_character

pytestmark = pytest.mark.provisioned  # e2e hosts: packages preinstalled (tests/provisioned.py)

ROOT = Path(__file__).resolve().parent.parent
CANARY = "/tmp/pwned"
INJECT = [f"$(touch {CANARY})", f"`touch {CANARY}`", f"';touch {CANARY};'", f'";touch {CANARY};"',
          f"${{IFS}}touch${{IFS}}{CANARY}", f"|touch {CANARY}", f"&& touch {CANARY}", f"\ntouch {CANARY}"]
CONTROL = ["\r", "\n", "\t", "\x00", "\x0b", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\u202e", "\ufeff"]
UPSTREAMS = ["localhost", "127.0.0.1", "172.27.0.5", "fuzz-upstream"]  # all resolvable in the host


def hostile(*valid: str):
    """A valid value broken in the ways issue 10 found (and a few more)."""
    base = st.sampled_from(valid)
    return st.one_of(
        st.builds(lambda v, i: v + i, base, st.sampled_from(INJECT)),
        st.builds(lambda v, c, n: v[:n] + c + v[n:], base, st.sampled_from(CONTROL), st.integers(0, 4)),
        st.sampled_from(["", " ", "%n", "%%", "\\", "{", "}", ";", "'", '"', "..", "/../", "//"]),
        st.text(max_size=12),
        st.integers(-1, 70000), st.floats(allow_nan=False, max_value=1e6), st.booleans(), st.none(),
    )


def field(valid, *bad_from: str, odds: int = 5):
    """Valid `odds` times out of odds+1 (so registries load and reach the real programs),
    else hostile. Hostile values that are valid (injection text in a description) are valid."""
    bad = hostile(*bad_from)
    return st.sampled_from(range(odds + 1)).flatmap(lambda k: bad if k == odds else valid)


def service(i: int, odds: int):
    """One entry (strategies built once: hypothesis validates each new strategy it sees)."""
    def field(valid, *bad_from):
        return globals()["field"](valid, *bad_from, odds=odds)

    optional_unit = st.one_of(st.just({}), field(st.just(f"api-{i}.service"), "ssh.service", "nginx.service",
                                                 "watchme-guard.service", "systemd-x.service",
                                                 "a.service").map(lambda u: {"unit": u}))
    entry = st.fixed_dictionaries({
        "name": field(st.sampled_from([f"svc{i}", f"api-{i}", f"x{i}-y"]), f"svc{i}"),
        "description": field(st.one_of(st.sampled_from(["Scheduler API", "日本語の説明", "a: b (c) [d] #e"]),
                                       st.sampled_from(INJECT[:5]).map(lambda s: "run " + s)), "desc"),
        "container": field(st.just(f"c{i}"), f"c{i}"),
        "ip": field(st.just(f"172.27.0.{20 + i}"), "172.27.0.9"),
        "port": field(st.just(8020 + i), "8020"),
        "public_path": field(st.sampled_from([f"/p{i}/", f"/p{i}/v1/"]), f"/p{i}/"),
        "upstream_path": field(st.sampled_from(["/", "/api/x/"]), "/"),
        "upstream_host": field(st.sampled_from(UPSTREAMS), "169.254.169.254", "0.0.0.0",
                               "2852039166", "fe80::1", "metadata.google.internal"),
        "max_body_size": field(st.sampled_from(["1m", "10M", "512k", "1g"]), "0", "0m", "10MB"),
        "timeouts": st.fixed_dictionaries({"read": field(st.sampled_from(["60s", "5m", "1m30s", "500ms"]),
                                                         "1m 30s", "5")}),
        "probe": st.fixed_dictionaries({
            "path": field(st.sampled_from(["", "status", "status/whisper", "health?full=1"]), "status"),
            "expect": field(st.just(200), "200")}),
        "methods": field(st.just(["GET", "POST", "OPTIONS"]), "GET"),
        "cors_origins": field(st.sampled_from([[], ["*"], ["https://hey-watch.me"]]), "https://x"),
        "memory_limit": st.just("32m"),
        "priority": field(st.just(1), "1"),
        "compose_file": field(st.sampled_from([f"/home/ubuntu/s{i}/docker-compose.prod.yml",
                                               f"/opt/s{i}/compose.yaml"]), "/srv/a.yml"),
    })
    return st.builds(lambda e, u: {**e, **u}, entry, optional_unit)


def registry_strategy(odds: int):
    services = [service(i, odds) for i in range(3)]
    return st.one_of(*[st.tuples(*services[:n]) for n in (1, 2, 3)]).map(lambda t: {"services": list(t)})


registries = registry_strategy(odds=5)  # about half the entries have a hostile field
mostly_valid = registry_strategy(odds=60)  # enough load to exercise nginx and systemd

WHERE = re.compile(r"^(registry|services|services\[(#\d+|[a-z][a-z0-9-]*)\](\.[a-z_]+|\[\d+\])+): ")


def check_error(error: RegistryError) -> None:
    """Every problem names where (services[NAME].FIELD) and echoes no raw control character."""
    assert error.problems
    fields = set(Service.model_fields)
    for line in error.problems:
        assert WHERE.match(line), line
        assert control_character(line) is None, repr(line)
        m = re.match(r"services\[[^\]]+\]\.([a-z_]+)", line)
        if m:
            assert m[1] in fields or ": unknown key" in line, line


# --- rendering, the way the deploy renders (pyinfra's Jinja environment) -------------------

def render_site(services, s: Settings) -> str:
    """The site as tasks/nginx.py renders it (watchme/nginx.py), HTTP only: the test host has
    no certificate, and the TLS lines hold settings, not registry values."""
    return nginx.render_site(s.server_name, services, f"{s.config_root}/nginx/backups", tls=None)


def render_unit(svc, s: Settings, compose: str) -> str:
    """A service unit as tasks/units.py renders it (it doubles '%'; the registry refuses '%')."""
    return get_template(str(ROOT / "templates" / "service.unit.j2")).render(
        service=svc.name, unit=svc.unit, description=svc.description.replace("%", "%%"),
        compose=compose, compose_file=svc.compose_file.replace("%", "%%"),
        infra_unit=s.infra_unit, pull=True,
        override_file=override_path(s.config_root, svc.name).replace("%", "%%"))


SAFE = re.compile(r"[A-Za-z0-9._~/?=-]*", re.ASCII)


CLIMBS = {"services": [{"name": "svc0", "description": "d", "container": "c0", "ip": "172.27.0.20",
                        "port": 8020, "public_path": "/../", "upstream_path": "/", "memory_limit": "32m",
                        "priority": 1, "compose_file": "/opt/s0/compose.yaml"}]}


@given(registries)
@example(CLIMBS)  # once raised uri.normalize's ValueError instead of a RegistryError
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_registry_loads_or_names_the_field(data):
    try:
        reg = load_data(data)
    except RegistryError as e:
        check_error(e)
        return
    for svc in reg.services:
        # What reaches a shell (probe URL, compose file) is made of characters no shell reads.
        assert SAFE.fullmatch(svc.probe_url_path) and SAFE.fullmatch(svc.compose_file)
        assert "%" not in svc.description and "\\" not in svc.description
        assert control_character(svc.description) is None
        assert svc.unit.endswith(".service") and SAFE.fullmatch(svc.unit)


# --- the real programs, in one test host ------------------------------------------------

COMPOSE = "/usr/local/bin/compose-stub"
SETUP = f"""set -e
export DEBIAN_FRONTEND=noninteractive
command -v nginx >/dev/null || {{ apt-get update -qq && \
    apt-get install -y -qq --no-install-recommends nginx >/dev/null; }}
grep -q fuzz-upstream /etc/hosts || echo '127.0.0.1 fuzz-upstream' >> /etc/hosts
printf '#!/bin/sh\\nexit 0\\n' > {COMPOSE}; chmod 755 {COMPOSE}
rm -f {CANARY}
"""


def collect(limit: int = 60) -> list:
    """Registries that load, found by hypothesis (the same generator as above)."""
    found = []

    @given(mostly_valid)
    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def search(data):
        if len(found) < limit:
            try:
                found.append(load_data(data))
            except RegistryError:
                pass

    search()
    return found


def bundle(regs, s: Settings) -> tuple[bytes, str, dict[str, str]]:
    """A tar of every rendered file, the check script (it prints one line per problem), and
    unit name -> expected Description."""
    buf, script, described = io.BytesIO(), ["set -u"], {}

    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(path: str, text: str) -> None:
            raw = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))

        # Stubs for what every service unit requires, so verify checks our units, not their absence.
        add("fuzz/stubs/docker.service", f"[Service]\nExecStart={COMPOSE}\n")
        add(f"fuzz/stubs/{s.infra_unit}", f"[Service]\nExecStart={COMPOSE}\n")
        # Controls: one bad site and one bad unit, which the checks must report (and only them).
        add("fuzz/control/site.conf", "server { location / { client_max_body_size 1m 30s; } }\n")
        add("fuzz/control/nginx.conf", "pid /tmp/fuzz/control/nginx.pid;\nevents {}\n"
                                       "http { include /tmp/fuzz/control/site.conf; }\n")
        script.append("nginx -t -q -c /tmp/fuzz/control/nginx.conf 2>/dev/null || echo 'nginx -t failed: control'")
        add("control-units/fuzz-control.service", f"[Unit]\nDescription=x\n[Service]\nExecStart={COMPOSE}\n"
                                                  "ExecStartPre=/nonexistent\n")
        for n, reg in enumerate(regs):
            d = f"fuzz/{n}"
            add(f"{d}/site.conf", render_site(reg.enabled_services, s))
            add(f"{d}/nginx.conf", f"pid /tmp/{d}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
                                   f"http {{\n    include /tmp/{d}/site.conf;\n}}\n")
            script.append(f"nginx -t -q -c /tmp/{d}/nginx.conf 2>&1 || echo 'nginx -t failed: {d}'")
            for svc in reg.services:
                loaded = f"fuzz-{n}-{svc.unit}"  # unique across examples for the systemd load
                add(f"units/{loaded}", render_unit(svc, s, COMPOSE))
                described[loaded] = svc.description
                # Worst case: the values that reach shells, unquoted (a root shell must not run them).
                script.append(f": http://127.0.0.1{svc.probe_url_path} {svc.compose_file}")
                script.append(f"echo probe http://127.0.0.1{svc.probe_url_path} >/dev/null")
    # One systemd-analyze for every unit of every example (unique names: fuzz-N-UNIT).
    script.append("SYSTEMD_UNIT_PATH=/tmp/fuzz/stubs: systemd-analyze verify /tmp/units/* "
                  "/tmp/control-units/* 2>&1 | sed 's/^/verify: /'")
    return buf.getvalue(), "\n".join(script) + "\n", described


def docker_exec(container: str, cmd: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", "-i", container, "sh", "-c", cmd], input=data,
                          capture_output=True, timeout=600)


@pytest.mark.e2e
def test_accepted_registries_pass_nginx_and_systemd_and_never_execute(testhost, host):
    s = Settings()
    regs = collect()
    assert len(regs) >= 20, f"the generator found only {len(regs)} valid registries"
    hostile_descriptions = [svc.description for r in regs for svc in r.services if "touch" in svc.description]
    assert hostile_descriptions, "no accepted description carried an injection attempt"

    setup = docker_exec(testhost.name, SETUP)
    assert setup.returncode == 0, setup.stderr.decode()[-2000:]
    tar, script, described = bundle(regs, s)
    unpack = docker_exec(testhost.name, "rm -rf /tmp/fuzz /tmp/units /tmp/control-units && tar -x -C /tmp", tar)
    assert unpack.returncode == 0, unpack.stderr.decode()

    # One batch: nginx -t on every site, systemd-analyze verify on every unit. Only the controls fail.
    check = docker_exec(testhost.name, script)
    report = (check.stdout + check.stderr).decode()
    assert check.returncode == 0, report[-4000:]
    assert "nginx -t failed: control" in report and "verify: " in report, "the checks did not run"
    problems = [line for line in report.splitlines() if "control" not in line]
    assert problems == [], "\n".join(problems[:40])

    # systemd itself reads the units: the Description is the registry's, nothing more was added.
    load = docker_exec(testhost.name, "cp /tmp/units/* /etc/systemd/system/ && systemctl daemon-reload")
    assert load.returncode == 0, load.stderr.decode()
    names = sorted(described)
    show = host.check_output("systemctl show -p Id -p Description -p ExecStartPre -p ExecStart "
                             + " ".join(shlex.quote(n) for n in names))
    blocks = [dict(line.split("=", 1) for line in b.splitlines() if "=" in line)
              for b in show.strip().split("\n\n")]
    by_id = {b["Id"]: b for b in blocks}
    for name in names:
        got = by_id[name]
        assert got["Description"] == described[name], name
        assert f"path={COMPOSE}" in got["ExecStart"], got["ExecStart"]
        assert "touch" not in got["ExecStart"] + got.get("ExecStartPre", ""), name
    docker_exec(testhost.name, "cd /etc/systemd/system && rm -f fuzz-* && systemctl daemon-reload")

    assert not host.file(CANARY).exists, "a generated value executed"
