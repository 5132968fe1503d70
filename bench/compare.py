"""Benchmark, side by side in one run: a no-op deploy locally and over a ~100 ms RTT WAN.

    .venv/bin/python bench/compare.py [--hosts 5] [--runs 5] [--delay-ms 50]

Starts --hosts fresh test hosts and converges them all at once with the operator's
command (the first converge: wall time and SSH sessions of one host, from pyinfra's --debug
log), measures the first, second and third no-op after it, then medians of --runs for each
row, locally and through /work/shared/tools/latency-proxy.py (DELAY_MS each way, so 50 ->
~100 ms RTT) in front of the first host's SSH port:

- the operator's command, `watchme deploy -y --json` (the no-op memo: one ssh command when
  it matches, else pyinfra), no local state (HOME is a new empty directory on every run:
  a CI runner), after one warm-up run that leaves the memo for this inventory name;
- raw pyinfra, `pyinfra -y --json inventory.py deploy.py`, no local state and the
  operator's HOME (measured first: a run outside `watchme deploy` removes the memo);
- `ssh host true` (OpenSSH, a new connection each time): the floor; also with the memo
  check's key exchanges (pyinfra's: curve25519, not OpenSSH 9.x's sntrup761x25519);
- the bash one-shot, reduced job: one `ssh host sudo sh -s` that checks what a no-op must
  (packages installed, services enabled and active, every unit active, the sha256 of every
  rendered file against a manifest taken after the converge) and prints "no change";
- 5 hosts at once: one deploy process per host, started together (the wall time of all),
  for raw pyinfra and for the operator's command.

SSH sessions are counted honestly: every remote command and every upload is a channel
(session) on pyinfra's one connection; `ssh true`, the one-shot and a memo hit are one
session each; a memo miss is its one ssh command plus pyinfra's sessions.
Prints a Markdown table for bench/RESULTS.md. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from watchme import testhost as th  # noqa: E402

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
WATCHME = str(Path(sys.executable).with_name("watchme"))
PROXY = "/work/shared/tools/latency-proxy.py"
ONESHOT = r"""
set -u
for p in nginx docker.io curl; do
  dpkg-query -W -f='${db:Status-Status}\n' "$p" 2>/dev/null | grep -qx installed || echo "change: install $p"
done
for s in docker nginx; do
  systemctl is-enabled -q "$s" && systemctl is-active -q "$s" || echo "change: start $s"
done
for u in $(ls CONFIG_ROOT/systemd/ 2>/dev/null | grep '\.service$'); do
  systemctl is-enabled -q "$u" 2>/dev/null || echo "change: enable $u"
done
cd CONFIG_ROOT && sha256sum --quiet -c - <<'EOF' || echo "change: files"
MANIFEST
EOF
echo "no change"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd: list[str], env: dict | None = None, **kw) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, **kw)
    return time.perf_counter() - start, p


class Target:
    """One way to reach a test host: directly, or through the latency proxy."""

    def __init__(self, host: th.TestHost, work: Path, port: int | None = None):
        self.host, self.port = host, port or host.port
        work.mkdir(parents=True, exist_ok=True)
        kh = work / "known_hosts"
        kh.write_text(Path(host.known_hosts).read_text().replace(
            f"[127.0.0.1]:{host.port}", f"[127.0.0.1]:{self.port}"))
        self.state = work / "host.json"
        self.state.write_text(json.dumps({"name": host.name, "port": self.port, "user": host.user,
                                          "key": host.key, "known_hosts": str(kh)}))
        self.ssh = ["ssh", "-p", str(self.port), "-i", host.key, "-o", "IdentitiesOnly=yes",
                    "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=yes",
                    "-o", "BatchMode=yes", "-o", "ControlMaster=no", f"{host.user}@127.0.0.1"]

    def env(self, home: str | None = None) -> dict:
        # An operator's Python writes bytecode (this machine's environment says not to: the
        # checkout's modules would be compiled on every run, ~20 ms no laptop pays).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("WATCHME_") and k != "PYTHONDONTWRITEBYTECODE"}
        env["WATCHME_TESTHOST"] = str(self.state)
        if home:
            env["HOME"] = home
        return env

    def deploy(self, *extra: str, home: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
        """Raw pyinfra."""
        return timed([PYINFRA, "-y", "--json", *extra, "inventory.py", "deploy.py"],
                     self.env(home), timeout=1800)

    def watchme(self, *extra: str, home: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
        """The operator's command."""
        return timed([WATCHME, "deploy", "-y", "--json", *extra], self.env(home), timeout=1800)


def kex(ssh: list[str]) -> list[str]:
    """The same ssh command with the memo check's key exchanges (watchme/noop_memo.py KEX)."""
    from watchme.noop_memo import KEX
    return [*ssh[:-1], "-o", f"KexAlgorithms={KEX}", ssh[-1]]


def sessions(stderr: str) -> tuple[int, int]:
    return stderr.count("Running command on "), stderr.count("Attempting upload of ")


def hit(p: subprocess.CompletedProcess) -> bool:
    return "no change (memo: " in p.stderr and "--> no-op memo: " not in p.stderr


def operator_sessions(p: subprocess.CompletedProcess) -> str:
    """A memo hit: its one ssh command; a miss: that command plus pyinfra's (--debug)."""
    if hit(p):
        return "1 session (memo hit)"
    c, u = sessions(p.stderr)
    return f"{1 + c + u} sessions (memo miss: 1 + {c} commands + {u} uploads)"


def changed(p: subprocess.CompletedProcess) -> int:
    try:
        return json.loads(p.stdout)["results"]["totals"]["success"]
    except (ValueError, KeyError):
        return -1


def median(fn, runs: int) -> float:
    return statistics.median(fn() for _ in range(runs))


def host_cpu(name: str) -> float | None:
    """CPU seconds a test host (its container's cgroup: sshd, sudo, the plan, dockerd,
    systemd) has used so far; None where this machine's cgroup layout is not known."""
    cid = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", name], capture_output=True,
                         text=True).stdout.strip()
    for path, scale in ((f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage", 1e9),
                        (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat", 1e6),
                        (f"/sys/fs/cgroup/docker/{cid}/cpu.stat", 1e6)):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith("cpu.stat"):
            text = dict(line.split() for line in text.splitlines())["usage_usec"]
        return int(text) / scale
    return None


def cpu_cost(fn, name: str, runs: int) -> tuple[float, float] | None:
    """Medians of (CPU seconds here: the command and its children such as ssh; CPU seconds
    on the test host) of one run of fn."""
    import resource
    local, remote = [], []
    for _ in range(runs):
        r0, h0 = resource.getrusage(resource.RUSAGE_CHILDREN), host_cpu(name)
        fn()
        r1, h1 = resource.getrusage(resource.RUSAGE_CHILDREN), host_cpu(name)
        if h0 is None or h1 is None:
            return None
        local.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
        remote.append(h1 - h0)
    return statistics.median(local), statistics.median(remote)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--delay-ms", type=int, default=50)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="watchme-bench-"))
    hosts, proxy = [], None
    rows: list[tuple[str, str, str]] = []
    try:
        hosts = [th.start() for _ in range(args.hosts)]
        local = [Target(h, work / h.name) for h in hosts]
        # First converge, all hosts at once; the first one with --debug to count sessions.
        with ThreadPoolExecutor(len(local)) as pool:
            firsts = list(pool.map(lambda it: it[1].watchme(*(["--debug"] if it[0] == 0 else [])),
                                   enumerate(local)))
        for wall, p in firsts:
            if p.returncode != 0:
                sys.exit(f"converge failed:\n{p.stderr[-3000:]}")
        rows.append(("first converge of a fresh host, local (all hosts at once), `watchme deploy`",
                     f"{firsts[0][0]:.1f} s", operator_sessions(firsts[0][1])))
        for n in (1, 2, 3):  # the plan and the memo complete themselves after a converge
            wall, p = local[0].watchme("--debug", home=tempfile.mkdtemp(dir=work))
            assert changed(p) == 0, p.stderr[-2000:]
            rows.append((f"no-op #{n} after the converge, local, `watchme deploy`",
                         f"{wall:.2f} s", operator_sessions(p)))

        port = free_port()
        proxy = subprocess.Popen([sys.executable, PROXY, str(port), str(hosts[0].port),
                                  str(args.delay_ms), "--seconds", "3600"])
        time.sleep(0.5)
        wan = Target(hosts[0], work / "wan", port)
        one = local[0]
        manifest = subprocess.run(
            [*one.ssh, f"cd {th_config_root()} && sudo find . -type f ! -path './nginx/backups/*' "
             "-exec sha256sum {} +"], capture_output=True, text=True, check=True).stdout.strip()
        script = ONESHOT.replace("CONFIG_ROOT", th_config_root()).replace("MANIFEST", manifest)

        for label, t in (("local", one), (f"{2 * args.delay_ms} ms RTT", wan)):
            _, dbg = t.deploy("--debug", home=tempfile.mkdtemp(dir=work))
            c, u = sessions(dbg.stderr)
            fresh = [t.deploy(home=tempfile.mkdtemp(dir=work)) for _ in range(args.runs)]
            assert all(changed(p) == 0 for _, p in fresh), [p.stderr[-500:] for _, p in fresh]
            cached = median(lambda: t.deploy()[0], args.runs)
            t.watchme()  # warm-up: the raw runs removed the memo; this one writes it again
            ours = [t.watchme(home=tempfile.mkdtemp(dir=work)) for _ in range(args.runs)]
            assert all(changed(p) == 0 for _, p in ours), [p.stderr[-500:] for _, p in ours]
            hits = sum(hit(p) for _, p in ours)
            floor = median(lambda: timed([*t.ssh, "true"])[0], args.runs)
            floor_kex = median(lambda: timed(kex(t.ssh) + ["true"])[0], args.runs)

            def oneshot() -> float:
                wall, p = timed([*t.ssh, "sudo", "sh", "-s"], input=script)
                assert p.stdout.strip() == "no change", p.stdout + p.stderr
                return wall
            bash = median(oneshot, args.runs)
            nf = statistics.median(w for w, _ in fresh)
            no = statistics.median(w for w, _ in ours)
            rows += [
                (f"no-op, {label}, `watchme deploy`, no local state (fresh HOME)",
                 f"{no:.2f} s ({no / floor:.1f} x ssh true)",
                 f"1 session ({hits} of {args.runs} runs were memo hits)"),
                (f"no-op, {label}, raw pyinfra, no local state (fresh HOME)",
                 f"{nf:.2f} s ({nf / floor:.1f} x ssh true)", f"{c + u} sessions"),
                (f"no-op, {label}, raw pyinfra, operator's HOME", f"{cached:.2f} s", f"{c + u} sessions"),
                (f"`ssh host true`, {label}", f"{floor:.2f} s", "1 session"),
                (f"`ssh host true` with the memo check's key exchange (pyinfra's), {label}",
                 f"{floor_kex:.2f} s", "1 session"),
                (f"bash one-shot (reduced job), {label}", f"{bash:.2f} s", "1 session"),
            ]
        # What one no-op costs in CPU, here and on the host: N hosts at once on this machine
        # share its cores with the N test hosts, so N x (both) / cores is their floor.
        one.watchme()  # warm-up: the WAN runs took the memo under another name
        costs = [("`watchme deploy` (memo hit)", lambda: one.watchme()),
                 ("`ssh host true`", lambda: timed([*one.ssh, "true"])),
                 ("`ssh host true`, pyinfra's key exchange", lambda: timed(kex(one.ssh) + ["true"])),
                 ("bash one-shot", lambda: timed([*one.ssh, "sudo", "sh", "-s"], input=script))]
        cores = os.cpu_count() or 1
        for label, fn in costs:
            cost = cpu_cost(fn, hosts[0].name, args.runs)
            if cost:
                total = sum(cost)
                rows.append((f"CPU of one no-op, local, {label}: here + on the host",
                             f"{cost[0]:.2f} + {cost[1]:.2f} = {total:.2f} s "
                             f"({len(local)} hosts at once: >= {len(local) * total / cores:.2f} s "
                             f"on {cores} cores)", ""))
        if len(local) > 1:
            for label, how in (("raw pyinfra", "deploy"), ("`watchme deploy`", "watchme")):
                misses: list[str] = []

                def all_at_once() -> float:
                    start = time.perf_counter()
                    with ThreadPoolExecutor(len(local)) as pool:
                        done = list(pool.map(lambda t: getattr(t, how)(), local))
                    assert all(changed(p) == 0 for _, p in done)
                    misses.extend(next((l.split("--> no-op memo: ", 1)[1] for l in
                                        p.stderr.splitlines() if "--> no-op memo: " in l), "?")
                                  for _, p in done if how == "watchme" and not hit(p))
                    return time.perf_counter() - start
                if how == "watchme":  # warm-up: the raw runs (and the WAN name) took the memos
                    with ThreadPoolExecutor(len(local)) as pool:
                        list(pool.map(lambda t: t.watchme(), local))
                single = median(lambda: getattr(one, how)()[0], args.runs)
                multi = median(all_at_once, args.runs)
                runs = len(local) * args.runs
                rows.append((f"no-op, {len(local)} hosts at once (one process each), local, {label}",
                             f"{multi:.2f} s ({multi / single:.1f} x one host, {single:.2f} s)",
                             "" if how != "watchme" else f"{runs - len(misses)} of {runs} host "
                             "runs were memo hits" + (f" (misses: {'; '.join(sorted(set(misses)))[:300]})"
                                                      if misses else "")))
    finally:
        if proxy:
            proxy.terminate()
        for h in hosts:
            th.stop(h.name)
        shutil.rmtree(work, ignore_errors=True)
    print(f"| measurement (median of {args.runs}) | wall | SSH sessions |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    return 0


def th_config_root() -> str:
    import runpy
    return runpy.run_path(str(ROOT / "group_data" / "all.py"))["config_root"]


if __name__ == "__main__":
    sys.exit(main())
