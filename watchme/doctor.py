"""`watchme doctor`: the runbook's diagnosis ("トラブルシューティング") as one read-only command.

    watchme doctor [--data key=value ...]            one table per host; exit 1 when a row fails
    watchme doctor --json                            the same rows as JSON

Per service (from the registry): its container running (an OOM kill named with the limit
the container really had), its memory limit as the registry says, its port listening, the
upstream answering on its internal path (http://localhost:PORT + upstream_path + probe path,
what Nginx requests), the route answering through Nginx (Host: server_name, public_path +
probe path). Per host: `nginx -t`, the Docker daemon, disk use of Docker's data root, memory
and swap, watchme-network's subnet and gateway, and its range for dynamic addresses. A failed row names the likely cause and the
runbook's fix (ADVICE: check -> finding -> (cause, fix)).

It reaches the hosts exactly as a deploy does (watchme/inspect.py: inventory.py, group_data,
`--data` overrides, sudo, strict host keys) and reads everything with one fact per host:
the host scripts the guard installed (network_monitor.py --check, disk_guard.py --check, the
same implementation the guard and the deploy use), /proc, curl and `nginx -t`. It changes
nothing.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import shlex
import sys
from dataclasses import asdict, dataclass

from pyinfra.api import FactBase

from watchme import kv
from watchme.network_check import size
from watchme.settings import default_range


@dataclass
class Row:
    scope: str  # "host" or a service name
    check: str
    ok: bool
    detail: str
    cause: str = ""
    fix: str = ""


# What a failed check means and what the runbook says to do, per finding. The texts are
# formatted with the row's context (service fields, settings, measured values).
ADVICE: dict[str, dict[str, tuple[str, str]]] = {
    "nginx": {
        "fail": ("the Nginx configuration does not load",
                 "sudo nginx -t names the file and line; the deploy's nginx-safe-apply restores "
                 "the last good site: run the deploy")},
    "docker": {
        "down": ("the Docker daemon is down: every container is",
                 "sudo systemctl start docker; sudo journalctl -u docker -n 50")},
    "disk": {
        "full": ("Docker's disk is nearly full: pulls and starts fail with 'no space left on device'",
                 "sudo python3 {scripts}/disk_guard.py (prunes as the guard does, keeping volumes "
                 "and the services' containers); sudo docker system df (runbook: ディスク容量不足)"),
        "unchecked": ("the disk guard cannot look: {error}",
                      "run the deploy (it installs {scripts}/disk_guard.py); check the docker row")},
    "memory": {
        "low": ("memory is nearly exhausted: the OOM killer stops containers (Exited 137)",
                "docker stats --no-stream; free -h; stop the services with the highest priority "
                "numbers first (runbook: メモリ不足)")},
    "swap": {
        "busy": ("swap is over 80% used: the host is short of memory",
                 "see the memory row; docker stats --no-stream"),
        "none": ("no swap: the t4g.small's 1.8 GB is not enough for every service at once",
                 "run the deploy: the bootstrap makes {swap_file} ({swap_size_mib} MiB)")},
    "network": {
        "missing": ("{network_name} does not exist: containers cannot reach each other by name",
                    "sudo systemctl restart {infra_unit} (it creates the network)"),
        "drift": ("{network_name} has subnet/gateway {found}, not {want}",
                  "set network_repair = True for one deploy: it recreates the network and "
                  "reconnects each container with its IP"),
        "unchecked": ("the network check cannot look: {error}",
                      "run the deploy (it installs {scripts}/network_monitor.py); check the docker row")},
    # network_repair.py --check's own words: "{network_name} has no range of its own ..."
    "network range": {
        "outdated": ("{report_head}",
                     "recreate it in a maintenance window with --data network_repair=true (the "
                     "deploy reconnects every container with its IP and aliases; each loses the "
                     "network for a moment)")},
    "container": {
        "missing": ("no container {container}",
                    "sudo systemctl start {unit} (compose up from {compose_file}); "
                    "sudo journalctl -u {unit} -n 50"),
        "oom": ("{container} was killed (exit {exit_code}, OOM killer: {oom}) with a limit of "
                "{real_limit}; registry memory_limit {memory_limit}",
                "free -h; docker stats --no-stream; stop low-priority services or raise "
                "memory_limit; then sudo systemctl restart {unit}"),
        "stopped": ("{container} is {state} (exit {exit_code})",
                    "docker logs {container} --tail 50; sudo systemctl restart {unit}")},
    "memory limit": {
        "mismatch": ("{container} runs with a memory limit of {real_limit}, the registry says "
                     "{memory_limit}: the memory budget does not hold",
                     "run the deploy (it renders the limit into the unit's compose override), "
                     "then sudo systemctl restart {unit}")},
    "port": {
        "down": ("nothing listens on port {port}: the container is down", "see the container row"),
        "closed": ("{container} runs but nothing listens on port {port}",
                   "docker port {container} must show {port}; publish it in {compose_file} "
                   "(ports: \"127.0.0.1:{port}:{port}\") or fix the registry's port")},
    "upstream": {
        "none": ("no answer from {internal}", "see the port and container rows"),
        "404": ("the app answers on port {port} but not at {upstream_path}: a path mismatch",
                "find where the app serves (curl -i http://localhost:{port}/...) and set "
                "upstream_path for {name} in services.yaml to it, then deploy"),
        "5xx": ("the app fails ({code})", "docker logs {container} --tail 50"),
        "other": ("answered {code}, expected {want}",
                  "check the probe for {name} in services.yaml (path, expect)")},
    "overlay": {
        "unreachable": ("this host's anchor container cannot reach {container} on {host} over "
                        "{network_name}: {answer}",
                        "on both hosts: sudo docker network inspect {network_name}; the security "
                        "group must allow 2377/tcp, 7946/tcp+udp and 4789/udp between them; "
                        "run the deploy (it restarts the anchor and the unit)")},
    "route": {
        "container": ("{rcode}: Nginx gets no good answer from {upstream_url}",
                      "the container row: start it (sudo systemctl start {unit}); "
                      "sudo tail -n 50 /var/log/nginx/error.log"),
        "port": ("{rcode}: Nginx gets no good answer from {upstream_url}",
                 "the port row: publish port {port}; sudo tail -n 50 /var/log/nginx/error.log"),
        "upstream": ("{rcode}: Nginx gets no good answer from {upstream_url}",
                     "the upstream row: fix the app; sudo tail -n 50 /var/log/nginx/error.log"),
        "app404": ("404 from the app: Nginx sends {public_path}... to {upstream_url}, where the "
                   "app has no such path (upstream_path mismatch)",
                   "set upstream_path for {name} in services.yaml to where the app serves, then deploy"),
        "nginx404": ("404 from Nginx: no location for {public_path} in the live site",
                     "run the deploy (it renders and reloads the site); check sudo nginx -t and "
                     "sudo nginx -T | grep -A5 'location {public_path}'"),
        "none": ("Nginx does not answer (port 443; port 80 when http_only)",
                 "sudo systemctl status nginx; sudo nginx -t"),
        "other": ("answered {rcode}, expected {want}", "sudo tail -n 50 /var/log/nginx/error.log")},
    # {scripts}/pull_check.py's classification of a failed pull (its causes, its fixes).
    "image pull": {
        "compose": ("cannot tell {container}'s image from {compose_file}: {detail}",
                    "fix {compose_file} (the image: of the service with container_name "
                    "{container}), then deploy"),
        "unchecked": ("the pull check cannot run: {detail}",
                      "run the deploy (it installs {scripts}/pull_check.py); check the docker row"),
        "helper_missing": ("the ECR credential helper is not installed: {detail}",
                           "run the deploy (it installs amazon-ecr-credential-helper and names "
                           "it in root's Docker config credHelpers)"),
        "not_configured": ("root's Docker config does not use the ECR helper for {ecr_registry}",
                           "run the deploy: it sets credHelpers[{ecr_registry}] = ecr-login in "
                           "/root/.docker/config.json (never `docker login` to ECR: that token "
                           "expires after 12 hours)"),
        "no_credentials": ("the instance has no usable IAM role: {detail}",
                           "attach a role with AmazonEC2ContainerRegistryReadOnly (EC2 console > "
                           "Actions > Security > Modify IAM role); check the metadata service"),
        "unauthorized": ("the registry refused the credentials: {detail}",
                         "remove an old `docker login` token (sudo docker logout {ecr_registry}), "
                         "run the deploy, and check the role's ecr:GetAuthorizationToken/"
                         "ecr:BatchGetImage"),
        "not_found": ("{image} does not exist in the registry: {detail}",
                      "check the image in {compose_file} and that CI pushed that tag"),
        "network": ("the host cannot reach the registry: {detail}",
                    "check DNS, outbound HTTPS (security group, NACL), NAT or VPC endpoints"),
        "unknown": ("the pull failed: {detail}", "sudo docker pull {image}")},
}

SETTINGS = ("network_name", "network_subnet", "network_gateway", "network_ip_range", "server_name",
            "registry",
            "disk_prune_threshold", "swap_file", "swap_size_mib", "infra_unit", "config_root",
            "compose_pull", "ecr_registry", "ecr_region", "http_only")


def row(scope: str, check: str, name: str, detail: str, finding: str | None, ctx: dict) -> Row:
    """A row; finding None passes, else its cause and fix come from ADVICE."""
    if finding is None:
        return Row(scope, check, True, detail)
    cause, fix = ADVICE[check if check in ADVICE else name][finding]
    return Row(scope, check, False, detail, cause.format(**ctx), fix.format(**ctx))


def settings(data) -> dict:
    """The settings doctor needs from a host's data (group_data and --data applied)."""
    cfg = {k: data.get(k) for k in SETTINGS}
    cfg["scripts"] = f"{cfg['config_root']}/scripts"
    cfg["members"] = f"{cfg['config_root']}/monitor/members.json"
    cfg["ip_range"] = str(cfg["network_ip_range"] or default_range(
        ipaddress.IPv4Network(str(cfg["network_subnet"]))))
    services = cfg["registry"].enabled_services if cfg["registry"] is not None else []
    # One host: it runs and routes every service. placed() narrows this per host (issue 14).
    cfg.update(services=services, routed=services, remote=[], role="")
    return cfg


def placed(cfg: dict, host, inventory) -> dict:
    """This host's share: the services it runs, the routes it serves (the front: all, to
    their hosts' private addresses) and, on an overlay, the other hosts' containers it must
    reach by name through its anchor container."""
    from watchme import placement

    front = placement.front(inventory)
    here = placement.services_here(host, inventory)
    swarm = placement.swarm(host, inventory)
    def address(h) -> str:
        try:
            return placement.private_address(h) or "(no private address)"
        except Exception:  # noqa: BLE001 - an unreachable host: its row says so
            return "(unreachable)"

    routed = placement.routed(cfg["registry"], inventory, address) if placement.is_front(host) else []
    remote = [s for s in cfg["registry"].enabled_services if s not in here] if swarm else []
    where = {s.name: placement.service_host(s, placement.placement_name(front))
             for s in cfg["registry"].enabled_services}
    role = ("front" if placement.is_front(host) else "worker") if swarm else ""
    return {**cfg, "services": here, "routed": routed, "remote": remote, "where": where,
            "role": role}


def route(cfg: dict, path: str) -> str:
    """curl arguments for a route through the live Nginx: HTTPS (any certificate, as the
    deploy's probes) unless the site is http_only, whose port 80 redirects everything."""
    q, name = shlex.quote, cfg["server_name"]
    if cfg.get("http_only"):
        return f"-H {q('Host: ' + name)} {q('http://127.0.0.1' + path)}"
    return f"-k --resolve {q(name + ':443:127.0.0.1')} {q('https://' + name + path)}"


def probe_script(cfg: dict) -> str:
    """One read-only shell script printing key=value lines for every row (run with sudo)."""
    q = shlex.quote
    scripts = cfg["scripts"]
    lines = [
        "ports=$(awk 'NR>1 && $4==\"0A\" {n=split($2,a,\":\"); print a[n]}' /proc/net/tcp "
        "/proc/net/tcp6 2>/dev/null | sort -u | tr '\\n' ' ')",
        "code() { curl -s -o /dev/null -m 5 -w '%{http_code}' \"$@\" 2>/dev/null || true; }",
        'nt=$(nginx -t 2>&1); echo "nginx_rc=$?"; echo "nginx_out=$(echo "$nt" | tail -n1)"',
        'echo "docker_active=$(systemctl is-active docker 2>/dev/null)"',
        "docker info >/dev/null 2>&1; echo \"docker_info=$?\"",
        "awk '/^(MemTotal|MemAvailable|SwapTotal|SwapFree):/ {print $1 \"=\" $2}' /proc/meminfo "
        "| tr -d ':' ",
        'echo "virt=$(systemd-detect-virt --container 2>/dev/null || echo none)"',
        # The guard's own checks, read-only: one implementation for guard, deploy and doctor.
        f"echo \"guard_disk=$(python3 {q(scripts + '/disk_guard.py')} --check --json "
        f"--threshold {int(cfg['disk_prune_threshold'])} 2>/dev/null | tr -d '\\n')\"",
        f"echo \"guard_net=$(python3 {q(scripts + '/network_monitor.py')} --check --json "
        f"--members {q(cfg['members'])} 2>/dev/null | tr -d '\\n')\"",
        f"echo \"net_range=$(python3 {q(scripts + '/network_repair.py')} --check --json "
        f"--name {q(cfg['network_name'])} --ip-range {q(cfg['ip_range'])} 2>/dev/null "
        "| tr -d '\\n')\"",
    ]
    for s in cfg["services"]:
        k = s.name
        internal = f"http://localhost:{s.port}{s.upstream_path}{s.probe.path}"
        lines += [
            f'case " $ports " in *" {s.port:04X} "*) echo "{k}.listen=yes";; '
            f'*) echo "{k}.listen=no";; esac',
            f'echo "{k}.upstream=$(code {q(internal)})"',
        ]
    for s in cfg["routed"]:
        lines.append(f'echo "{s.name}.route=$(code {route(cfg, s.probe_url_path)})"')
    for s in cfg["remote"]:
        # Over the overlay from this host: the anchor container resolves and reaches the name.
        lines.append(f'echo "{s.name}.overlay=$(docker exec watchme-network-anchor /bin/busybox '
                     f'ping -c1 -W2 {q(s.container)} 2>&1 | head -n1 | tr -d "\\n")"')
    return "\n".join(lines) + "\n"


def service_images(cfg: dict, compose: dict) -> dict[str, str]:
    """{service name: image, or "!" + why not} from the compose files (ComposeFiles' value)."""
    from watchme.images import ComposeError, compose_target

    out = {}
    for s in cfg["registry"].enabled_services:
        found = (compose or {}).get(s.compose_file)
        if found is None:
            out[s.name] = "!the file is missing"
            continue
        try:
            image = compose_target(found["text"], s.container, cfg["network_name"])["image"]
        except ComposeError as e:
            image = f"!{e}"
        out[s.name] = image or "!the service has no image: (built on the host)"
    return out


def pull_script(cfg: dict, images: dict[str, str]) -> str:
    """key=value lines `<service>.pull=<pull_check.py --json>`, one pull per service image."""
    q = shlex.quote
    script = q(cfg["scripts"] + "/pull_check.py")
    lines = [f'echo "{k}.pull=$(python3 {script} --json --registry {q(cfg["ecr_registry"])} '
             f'--region {q(cfg["ecr_region"])} {q(image)} 2>/dev/null | tr -d "\\n")"'
             for k, image in images.items() if not image.startswith("!")]
    return "\n".join(lines + ["true"]) + "\n"


def pull_row(s, v: dict[str, str], cfg: dict, ctx: dict) -> Row:
    if not cfg.get("compose_pull"):
        return Row(s.name, "image pull", True, "pulls off (compose_pull is false)")
    image = v.get(f"{s.name}.image", "!not read")
    ctx = {**ctx, "image": image, "detail": ""}
    if image.startswith("!"):
        ctx["detail"] = image[1:]
        return row(s.name, "image pull", "image pull", "image unknown", "compose", ctx)
    answer = _json(v.get(f"{s.name}.pull"))
    if not answer or "cause" not in answer:
        ctx["detail"] = (v.get(f"{s.name}.pull") or "no answer from pull_check.py")[:300]
        return row(s.name, "image pull", "image pull", image, "unchecked", ctx)
    if answer.get("ok"):
        return row(s.name, "image pull", "image pull", f"{image}: pull ok", None, ctx)
    cause = answer["cause"] if answer["cause"] in ADVICE["image pull"] else "unknown"
    if answer["cause"] == "no_docker":
        cause, answer["detail"] = "unchecked", "docker is not installed"
    ctx["detail"] = (answer.get("detail") or "")[:300]
    return row(s.name, "image pull", "image pull", f"{image}: {answer['cause']}", cause, ctx)


class DoctorProbe(FactBase):
    """The probe script's key=value lines (probe_script), read as one fact with sudo."""

    def command(self, script: str) -> str:
        return script

    def process(self, output):
        return kv.parse(output)


def _json(text: str | None) -> dict | None:
    try:
        return json.loads(text or "")
    except ValueError:
        return None


def _mib(kib: str) -> int:
    return int(kib or 0) // 1024


def host_rows(v: dict[str, str], cfg: dict) -> list[Row]:
    ctx = dict(cfg)
    rows = [row("host", "nginx config (nginx -t)", "nginx", v.get("nginx_out", "?"),
                None if v.get("nginx_rc") == "0" else "fail", ctx)]
    up = v.get("docker_active") == "active" and v.get("docker_info") == "0"
    rows.append(row("host", "docker daemon", "docker", f"systemd: {v.get('docker_active') or '?'}",
                    None if up else "down", ctx))

    disk = _json(v.get("guard_disk")) or {}
    limit = cfg["disk_prune_threshold"]
    if disk.get("percent") is None:
        ctx["error"] = disk.get("error") or "no answer from disk_guard.py"
        rows.append(row("host", "docker disk", "disk", "not checked", "unchecked", ctx))
    else:
        rows.append(row("host", "docker disk", "disk",
                        f"{disk['root']} {disk['percent']}% used (limit {limit}%)",
                        None if disk["percent"] < limit else "full", ctx))

    total, avail = _mib(v.get("MemTotal", "0")), _mib(v.get("MemAvailable", "0"))
    rows.append(row("host", "memory", "memory", f"{avail} MiB available of {total} MiB",
                    None if total > 0 and avail * 10 >= total else "low", ctx))
    swap, swap_free = _mib(v.get("SwapTotal", "0")), _mib(v.get("SwapFree", "0"))
    if swap:
        rows.append(row("host", "swap", "swap", f"{swap - swap_free} MiB used of {swap} MiB",
                        None if swap_free * 5 >= swap else "busy", ctx))
    elif v.get("virt", "none") not in ("", "none"):
        rows.append(row("host", "swap", "swap",
                        f"none ({v['virt']} container: swap is its host's)", None, ctx))
    else:
        rows.append(row("host", "swap", "swap", "no swap", "none", ctx))

    report = _json(v.get("guard_net")) or {}
    net = report.get("network")
    ctx["want"] = f"{cfg['network_subnet']} {cfg['network_gateway']}"
    check = f"{cfg['network_name']} subnet"
    if net is None:
        ctx["error"] = report.get("error") or "no answer from network_monitor.py"
        rows.append(row("host", check, "network", "not checked", "unchecked", ctx))
    elif not net["exists"]:
        rows.append(row("host", check, "network", "missing", "missing", ctx))
    else:
        ctx["found"] = f"{net['found_subnet']} {net['found_gateway']}"
        rows.append(row("host", check, "network", ctx["found"],
                        None if net["ok"] else "drift", ctx))
    rows += range_rows(v, cfg)
    return rows


def range_rows(v: dict[str, str], cfg: dict) -> list[Row]:
    """The network's range for dynamic addresses (network_repair.py --check): none when the
    network is missing or the script cannot say (the subnet row tells why)."""
    found = _json(v.get("net_range")) or {}
    if not found.get("exists") or "outdated" not in found:
        return []
    have = found["network"].get("ip_range") or "(none)"
    ctx = {**cfg, "report_head": found["report"].splitlines()[0].rstrip(":") if found["report"] else ""}
    return [row("host", f"{cfg['network_name']} ip-range", "network range",
                f"{have}" + ("" if have == cfg["ip_range"] else f" (wanted {cfg['ip_range']})"),
                "outdated" if found["outdated"] else None, ctx)]


def service_rows(s, v: dict[str, str], cfg: dict, member: dict | None,
                 route: bool = True) -> list[Row]:
    k, unit = s.name, getattr(s, "unit", None) or f"{s.name}.service"
    member = member or {}
    state = member.get("state") or "missing"
    running = state in ("running", "paused")
    ctx = {**cfg, "name": k, "unit": unit, "container": s.container, "port": s.port,
           "compose_file": s.compose_file, "memory_limit": s.memory_limit,
           "real_limit": size(member.get("memory")), "state": state,
           "exit_code": member.get("exit_code", "?"),
           "oom": "true" if member.get("oom_killed") else "false",
           "upstream_path": s.upstream_path, "upstream_url": s.upstream_url,
           "public_path": s.public_path, "want": str(s.probe.expect),
           "internal": f"http://localhost:{s.port}{s.upstream_path}{s.probe.path}"}
    container = (None if running else "missing" if state == "missing"
                 else "oom" if member.get("oom_killed") else "stopped")
    rows = [row(k, "container running", "container", f"{s.container}: {state}", container, ctx)]
    rows.append(row(k, "memory limit", "memory limit",
                    f"{ctx['real_limit'] if member.get('memory') is not None else 'no container'} "
                    f"(registry {s.memory_limit})",
                    "mismatch" if member.get("memory_ok") is False else None, ctx))

    listening = v.get(f"{k}.listen") == "yes"
    rows.append(row(k, "port listening", "port", f"port {s.port}",
                    None if listening else "closed" if running else "down", ctx))

    code = ctx["code"] = v.get(f"{k}.upstream", "000")
    up_ok = code == ctx["want"]
    finding = (None if up_ok else "none" if code == "000" else "404" if code == "404"
               else "5xx" if code.startswith("5") else "other")
    rows.append(row(k, "upstream answers", "upstream", f"GET {ctx['internal']} -> {code}", finding, ctx))
    if route:
        rows.append(route_row(s, v, cfg, ctx, running, listening, up_ok))
    rows.append(pull_row(s, v, cfg, ctx))
    return rows


def route_row(s, v: dict[str, str], cfg: dict, ctx: dict, running: bool = True,
              listening: bool = True, up_ok: bool = True) -> Row:
    k = s.name
    rcode = ctx["rcode"] = v.get(f"{k}.route", "000")
    if rcode == ctx["want"]:
        finding = None
    elif rcode in ("502", "504") or (rcode.startswith("5") and not up_ok):
        finding = "container" if not running else "port" if not listening else "upstream"
    elif rcode == "404":
        finding = "app404" if ctx.get("code") == "404" else "nginx404"
    else:
        finding = "none" if rcode == "000" else "other"
    on = f" on {cfg['where'][k]}" if cfg.get("role") else ""
    return row(k, "route via nginx", "route",
               f"GET {s.probe_url_path} (Host: {cfg['server_name']}) -> {rcode} "
               f"({s.upstream_base}{on})" if on else
               f"GET {s.probe_url_path} (Host: {cfg['server_name']}) -> {rcode}", finding, ctx)


def remote_rows(s, v: dict[str, str], cfg: dict) -> list[Row]:
    """A container on another host, reached by name over the overlay from this host."""
    answer = v.get(f"{s.name}.overlay", "")
    ok = answer.startswith("PING ") and f"({s.ip})" in answer if s.ip else answer.startswith("PING ")
    ctx = {**cfg, "container": s.container, "host": cfg["where"][s.name], "answer": answer or "no answer"}
    return [row(s.name, f"overlay reaches {s.container} (on {ctx['host']})", "overlay",
                answer or "no answer", None if ok else "unreachable", ctx)]


def diagnose(values: dict[str, str], cfg: dict) -> list[Row]:
    rows = host_rows(values, cfg)
    report = _json(values.get("guard_net")) or {}
    members = {m["container"]: m for m in report.get("members") or []}
    routed = {s.name for s in cfg["routed"]}
    for s in cfg["services"]:
        rows += service_rows(s, values, cfg, members.get(s.container), route=s.name in routed)
    here = {s.name for s in cfg["services"]}
    for s in cfg["routed"]:
        if s.name not in here:  # the front's route to a service on another host
            ctx = {**cfg, "name": s.name, "unit": s.unit, "port": s.port, "public_path": s.public_path,
                   "upstream_url": s.upstream_url, "want": str(s.probe.expect)}
            rows.append(route_row(s, values, cfg, ctx))
    for s in cfg["remote"]:
        rows += remote_rows(s, values, cfg)
    return rows


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


def unreachable(why: str) -> list[Row]:
    return [Row("host", "ssh", False, why, "cannot reach the host or run sudo there",
                "check WATCHME_HOSTS, WATCHME_SSH_KEY, WATCHME_KNOWN_HOSTS; the deploy "
                "user needs passwordless sudo")]


def _pull_checks(state) -> dict[str, dict[str, str]]:
    """{host: {<service>.image, <service>.pull}} for the hosts with compose_pull on."""
    from watchme import inspect
    from watchme.network import ComposeFiles

    hosts = [h for h in state.inventory.get_active_hosts() if h.data.get("compose_pull")]
    if not hosts:
        return {}
    paths = lambda h: {"paths": sorted({s.compose_file for s in h.data.registry.enabled_services})}
    compose = inspect.facts(ComposeFiles, state=state, per_host=paths)
    out, images = {}, {}
    for name, (host, files) in compose.items():
        if host.data.get("compose_pull"):
            found = files if isinstance(files, dict) else {}
            images[name] = service_images(settings(host.data), found)
            out[name] = {f"{k}.image": v for k, v in images[name].items()}
    pulls = inspect.facts(DoctorProbe, state=state, per_host=lambda h: {
        "script": pull_script(settings(h.data), images.get(h.name, {}))})
    for name, (_, values) in pulls.items():
        if name in out and isinstance(values, dict):
            out[name].update(values)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="watchme doctor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="rows as JSON")
    p.add_argument("--data", action="append", metavar="KEY=VALUE",
                   help="override group data, as `pyinfra --data` does")
    args = p.parse_args(argv)
    from watchme import inspect

    try:
        data = inspect.parse_data(args.data)
        state, failed = inspect.connect(data)
    except (ValueError, SystemExit) as e:  # bad --data, a bad registry or WATCHME_* variable
        print(f"watchme doctor: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - pyinfra gives up when no host can be reached
        print(f"watchme doctor: no host reachable: {e}; fix: check WATCHME_HOSTS, "
              "WATCHME_SSH_KEY, WATCHME_KNOWN_HOSTS", file=sys.stderr)
        return 1
    report = {name: unreachable(why) for name, why in failed.items()}
    answers = inspect.facts(DoctorProbe, state=state, per_host=lambda h: {
        "script": probe_script(placed(settings(h.data), h, state.inventory))})
    pulls = _pull_checks(state)
    for name, (host, values) in answers.items():
        if isinstance(values, Exception) or values is None:
            report[name] = unreachable(f"{type(values).__name__}: {values}")
        else:
            report[name] = diagnose({**values, **pulls.get(name, {})},
                                    placed(settings(host.data), host, state.inventory))
    ok = all(r.ok for rows in report.values() for r in rows)
    if args.json:
        print(json.dumps({n: [asdict(r) for r in rows] for n, rows in report.items()}, indent=2))
    else:
        print("\n".join(render(n, rows) for n, rows in report.items()), end="")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
