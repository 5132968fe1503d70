"""`watchme doctor`: the runbook's diagnosis ("トラブルシューティング") as one read-only command.

    watchme doctor            one table per host; exit 1 when any row fails
    watchme doctor --json     the same rows as JSON

Per service (from the registry): its container running, its port listening, the upstream
answering on its internal path (http://localhost:PORT + upstream_path + probe path, what
Nginx requests), the route answering through Nginx (Host: server_name, public_path +
probe path). Per host: `nginx -t`, disk use of Docker's data root, memory and swap,
the Docker daemon, watchme-network's subnet and gateway. A failed row names the likely
cause and the runbook's fix: a 502 with the container down points at the container, a
404 from the app at an upstream_path that does not match where the app serves.

It reads everything with one command per host over the inventory's SSH settings (the
same WATCHME_* variables as the deploy) and changes nothing: docker inspect, /proc,
df, curl, `nginx -t`.
"""

from __future__ import annotations

import argparse
import json
import runpy
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from watchme.targets import TargetError, production, testhost

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    scope: str  # "host" or a service name
    check: str
    ok: bool
    detail: str
    cause: str = ""
    fix: str = ""


def settings() -> dict:
    """group_data/all.py's values (the registry is WATCHME_REGISTRY's or services.yaml)."""
    return runpy.run_path(str(ROOT / "group_data" / "all.py"))


def probe_script(cfg: dict) -> str:
    """One read-only shell script printing key=value lines for every row (run with sudo)."""
    q = shlex.quote
    lines = [
        "ports=$(awk 'NR>1 && $4==\"0A\" {n=split($2,a,\":\"); print a[n]}' /proc/net/tcp "
        "/proc/net/tcp6 2>/dev/null | sort -u | tr '\\n' ' ')",
        "code() { curl -s -o /dev/null -m 5 -w '%{http_code}' \"$@\" 2>/dev/null || true; }",
        'nt=$(nginx -t 2>&1); echo "nginx_rc=$?"; echo "nginx_out=$(echo "$nt" | tail -n1)"',
        'echo "docker_active=$(systemctl is-active docker 2>/dev/null)"',
        "docker info >/dev/null 2>&1; echo \"docker_info=$?\"",
        "root=$(docker info -f '{{.DockerRootDir}}' 2>/dev/null); root=${root:-/var/lib/docker}",
        'echo "data_root=$root"; echo "disk_pct=$(df -P "$root" 2>/dev/null | awk \'NR==2 {print $5+0}\')"',
        "awk '/^(MemTotal|MemAvailable|SwapTotal|SwapFree):/ {print $1 \"=\" $2}' /proc/meminfo "
        "| tr -d ':' ",
        'echo "virt=$(systemd-detect-virt --container 2>/dev/null || echo none)"',
        f"net=$(docker network inspect {q(cfg['network_name'])} -f "
        "'{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}' 2>/dev/null); "
        'echo "net_rc=$?"; echo "net=$net"',
    ]
    for s in cfg["registry"].enabled_services:
        k = s.name
        internal = f"http://localhost:{s.port}{s.upstream_path}{s.probe.path}"
        lines += [
            f"st=$(docker inspect -f '{{{{.State.Status}}}} {{{{.State.ExitCode}}}} "
            f"{{{{.State.OOMKilled}}}}' {q(s.container)} 2>/dev/null) || st=missing; "
            f'echo "{k}.state=$st"',
            f'case " $ports " in *" {s.port:04X} "*) echo "{k}.listen=yes";; '
            f'*) echo "{k}.listen=no";; esac',
            f'echo "{k}.upstream=$(code {q(internal)})"',
            f'echo "{k}.route=$(code -H {q("Host: " + cfg["server_name"])} '
            f'{q("http://127.0.0.1" + s.probe_url_path)})"',
        ]
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _mib(kib: str) -> int:
    return int(kib or 0) // 1024


def host_rows(v: dict[str, str], cfg: dict) -> list[Row]:
    rows = []
    ok = v.get("nginx_rc") == "0"
    rows.append(Row("host", "nginx config (nginx -t)", ok, v.get("nginx_out", "?"),
                    "" if ok else "the Nginx configuration does not load",
                    "" if ok else "sudo nginx -t names the file and line; the deploy's "
                    "nginx-safe-apply restores the last good site: run the deploy"))
    ok = v.get("docker_active") == "active" and v.get("docker_info") == "0"
    rows.append(Row("host", "docker daemon", ok, f"systemd: {v.get('docker_active') or '?'}",
                    "" if ok else "the Docker daemon is down: every container is",
                    "" if ok else "sudo systemctl start docker; sudo journalctl -u docker -n 50"))
    pct, limit = int(v.get("disk_pct") or 0), cfg["disk_prune_threshold"]
    ok = pct < limit
    rows.append(Row("host", "docker disk", ok, f"{v.get('data_root')} {pct}% used (limit {limit}%)",
                    "" if ok else "Docker's disk is nearly full: pulls and starts fail with "
                    "'no space left on device'",
                    "" if ok else "sudo docker system df; sudo docker container prune -f; "
                    "sudo docker image prune -a -f (runbook: ディスク容量不足)"))
    total, avail = _mib(v.get("MemTotal", "0")), _mib(v.get("MemAvailable", "0"))
    ok = total > 0 and avail * 10 >= total
    rows.append(Row("host", "memory", ok, f"{avail} MiB available of {total} MiB",
                    "" if ok else "memory is nearly exhausted: the OOM killer stops containers "
                    "(Exited 137)",
                    "" if ok else "docker stats --no-stream; free -h; stop the services with the "
                    "highest priority numbers first (runbook: メモリ不足)"))
    swap, swap_free = _mib(v.get("SwapTotal", "0")), _mib(v.get("SwapFree", "0"))
    container = v.get("virt", "none") not in ("", "none")
    if swap:
        ok, detail = swap_free * 5 >= swap, f"{swap - swap_free} MiB used of {swap} MiB"
        cause = "" if ok else "swap is over 80% used: the host is short of memory"
        fix = "" if ok else "see the memory row; docker stats --no-stream"
    elif container:
        ok, detail, cause, fix = True, f"none ({v['virt']} container: swap is its host's)", "", ""
    else:
        ok, detail = False, "no swap"
        cause = "no swap: the t4g.small's 1.8 GB is not enough for every service at once"
        fix = f"run the deploy: the bootstrap makes {cfg['swap_file']} ({cfg['swap_size_mib']} MiB)"
    rows.append(Row("host", "swap", ok, detail, cause, fix))
    want = f"{cfg['network_subnet']} {cfg['network_gateway']}"
    net = v.get("net", "")
    ok = v.get("net_rc") == "0" and net == want
    if v.get("net_rc") != "0":
        cause = f"{cfg['network_name']} does not exist: containers cannot reach each other by name"
        fix = f"sudo systemctl restart {cfg['infra_unit']} (it creates the network)"
    else:
        cause = f"{cfg['network_name']} has subnet/gateway {net or '?'}, not {want}"
        fix = "set network_repair = True for one deploy: it recreates the network and " \
              "reconnects each container with its IP"
    rows.append(Row("host", f"{cfg['network_name']} subnet", ok, net or "missing",
                    "" if ok else cause, "" if ok else fix))
    return rows


def service_rows(s, v: dict[str, str], cfg: dict) -> list[Row]:
    k, unit = s.name, f"{s.name}.service"
    state, _, rest = v.get(f"{k}.state", "missing").partition(" ")
    exit_code, _, oom = rest.partition(" ")
    running = state == "running"
    if running:
        cause = fix = ""
    elif state == "missing":
        cause = f"no container {s.container}"
        fix = f"sudo systemctl start {unit} (compose up from {s.compose_file}); " \
              f"sudo journalctl -u {unit} -n 50"
    elif oom == "true" or exit_code == "137":
        cause = f"{s.container} was killed (exit {exit_code}, OOM killer: {oom}); limit {s.memory_limit}"
        fix = "free -h; docker stats --no-stream; stop low-priority services or raise " \
              f"memory_limit; then sudo systemctl restart {unit}"
    else:
        cause = f"{s.container} is {state} (exit {exit_code or '?'})"
        fix = f"docker logs {s.container} --tail 50; sudo systemctl restart {unit}"
    rows = [Row(k, "container running", running, f"{s.container}: {state}", cause, fix)]

    listening = v.get(f"{k}.listen") == "yes"
    if listening:
        cause = fix = ""
    elif not running:
        cause, fix = f"nothing listens on port {s.port}: the container is down", "see the container row"
    else:
        cause = f"{s.container} runs but nothing listens on port {s.port}"
        fix = f"docker port {s.container} must show {s.port}; publish it in {s.compose_file} " \
              f"(ports: \"127.0.0.1:{s.port}:{s.port}\") or fix the registry's port"
    rows.append(Row(k, "port listening", listening, f"port {s.port}", cause, fix))

    internal = f"http://localhost:{s.port}{s.upstream_path}{s.probe.path}"
    code, want = v.get(f"{k}.upstream", "000"), str(s.probe.expect)
    up_ok = code == want
    if up_ok:
        cause = fix = ""
    elif code == "000":
        cause, fix = f"no answer from {internal}", "see the port and container rows"
    elif code == "404":
        cause = f"the app answers on port {s.port} but not at {s.upstream_path}: a path mismatch"
        fix = f"find where the app serves (curl -i http://localhost:{s.port}/...) and set " \
              f"upstream_path for {k} in services.yaml to it, then deploy"
    elif code.startswith("5"):
        cause, fix = f"the app fails ({code})", f"docker logs {s.container} --tail 50"
    else:
        cause, fix = f"answered {code}, expected {want}", \
            f"check the probe for {k} in services.yaml (path, expect)"
    rows.append(Row(k, "upstream answers", up_ok, f"GET {internal} -> {code}", cause, fix))

    route = f"{s.probe_url_path}"
    rcode = v.get(f"{k}.route", "000")
    ok = rcode == want
    if ok:
        cause = fix = ""
    elif rcode in ("502", "504") or (rcode.startswith("5") and not up_ok):
        first = "container row" if not running else "port row" if not listening else "upstream row"
        cause = f"{rcode}: Nginx gets no good answer from {s.upstream_url}"
        fix = f"the {first}: " + {"container row": f"start it (sudo systemctl start {unit})",
                                  "port row": f"publish port {s.port}",
                                  "upstream row": "fix the app"}[first] + \
            "; sudo tail -n 50 /var/log/nginx/error.log"
    elif rcode == "404" and code == "404":
        cause = f"404 from the app: Nginx sends {s.public_path}... to {s.upstream_url}, " \
                "where the app has no such path (upstream_path mismatch)"
        fix = f"set upstream_path for {k} in services.yaml to where the app serves, then deploy"
    elif rcode == "404":
        cause = f"404 from Nginx: no location for {s.public_path} in the live site"
        fix = "run the deploy (it renders and reloads the site); check sudo nginx -t and " \
              f"grep -A5 'location {s.public_path}' /etc/nginx/sites-enabled/{cfg['server_name']}"
    elif rcode == "000":
        cause, fix = "Nginx does not answer on port 80", "sudo systemctl status nginx; sudo nginx -t"
    else:
        cause, fix = f"answered {rcode}, expected {want}", "sudo tail -n 50 /var/log/nginx/error.log"
    rows.append(Row(k, "route via nginx", ok, f"GET {route} (Host: {cfg['server_name']}) -> {rcode}",
                    cause, fix))
    return rows


def diagnose(values: dict[str, str], cfg: dict) -> list[Row]:
    rows = host_rows(values, cfg)
    for s in cfg["registry"].enabled_services:
        rows += service_rows(s, values, cfg)
    return rows


def run_remote(data: dict, script: str, timeout: float = 60) -> str:
    """The script's output, run with sudo over SSH with the inventory's settings."""
    import paramiko

    client = paramiko.SSHClient()
    known = data.get("ssh_known_hosts_file") or str(Path("~/.ssh/known_hosts").expanduser())
    if Path(known).is_file():
        client.load_host_keys(known)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(data["ssh_hostname"], port=data.get("ssh_port", 22),
                       username=data.get("ssh_user"), key_filename=data.get("ssh_key"),
                       timeout=15, allow_agent=not data.get("ssh_key"))
        _, stdout, stderr = client.exec_command(f"sudo -n sh -c {shlex.quote(script)}",
                                                timeout=timeout)
        out = stdout.read().decode(errors="replace")
        if stdout.channel.recv_exit_status() != 0 and not out:
            raise RuntimeError(stderr.read().decode(errors="replace").strip() or "probe failed")
        return out
    finally:
        client.close()


def render(name: str, rows: list[Row]) -> str:
    failed = sum(not r.ok for r in rows)
    lines = [f"{name}: {'all ' + str(len(rows)) + ' checks pass' if not failed else f'{failed} of {len(rows)} checks FAIL'}"]
    w1 = max(len(r.scope) for r in rows)
    w2 = max(len(r.check) for r in rows)
    for r in rows:
        lines.append(f"  {r.scope:<{w1}}  {r.check:<{w2}}  {'ok  ' if r.ok else 'FAIL'}  {r.detail}")
        if not r.ok:
            lines.append(f"  {'':<{w1}}  {'':<{w2}}        cause: {r.cause}")
            lines.append(f"  {'':<{w1}}  {'':<{w2}}        fix:   {r.fix}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="watchme doctor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="rows as JSON")
    args = p.parse_args(argv)
    try:
        hosts = production() or testhost()
    except TargetError as e:
        print(f"watchme doctor: {e}", file=sys.stderr)
        return 2
    cfg = settings()
    script = probe_script(cfg)
    report, ok = {}, True
    for name, data in hosts:
        try:
            rows = diagnose(parse(run_remote(data, script)), cfg)
        except Exception as e:  # noqa: BLE001 - one unreachable host must not hide the others
            rows = [Row("host", "ssh", False, f"{type(e).__name__}: {e}",
                        "cannot reach the host or run sudo there",
                        "check WATCHME_HOSTS, WATCHME_SSH_KEY, WATCHME_KNOWN_HOSTS; the deploy "
                        "user needs passwordless sudo")]
        ok = ok and all(r.ok for r in rows)
        report[name] = rows
    if args.json:
        print(json.dumps({n: [asdict(r) for r in rows] for n, rows in report.items()}, indent=2))
    else:
        print("\n".join(render(n, rows) for n, rows in report.items()), end="")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
