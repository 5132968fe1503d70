#!/bin/sh
# Peak memory and wall time of one network check run (and one disk guard check, one network
# read), measured on the host itself, where the guard runs them every 5 minutes:
#   ssh ubuntu@SERVER 'sudo sh -s' < bench/monitor_memory.sh        # from the repo
#   sudo sh bench/monitor_memory.sh [RUNS] [SCRIPTS_DIR]               # on the host
# /usr/bin/time is often missing on the server, so a small python3 wrapper reads
# getrusage(RUSAGE_CHILDREN): ru_maxrss is the peak RSS of the largest child it waited for,
# i.e. of the monitor itself (the wrapper's own memory is not counted). For comparison it
# also measures `docker network inspect`, the Docker CLI, which the monitor does not use.
#
# Then every fact of the deploy's fact plan (/var/lib/watchme/fact-plan.sh, what a no-op's
# lock command runs, watchme/prefetch.py) is run once on its own, as the lock command runs it
# (root, or the login user for _sudo=False facts), and its process tree's peak RSS printed
# (wait4: the largest of the fact's shell and everything it waited for), largest first: the
# first line is the no-op's memory peak on the host. The measuring python3 forks each fact, so
# ~10.5 MB (its own size at the fork) is the floor of every figure: a shell-only fact is below.
runs=${1:-10}
scripts=${2:-/opt/watchme/scripts}
plan=${3:-/var/lib/watchme/fact-plan.sh}
python3 - "$runs" "$scripts" <<'PY'
import resource, statistics, subprocess, sys, time

runs, scripts = int(sys.argv[1]), sys.argv[2]
script = f"{scripts}/network_monitor.py"


def cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(label, argv):
    times, codes, cpu0 = [], set(), cpu()
    for _ in range(runs):
        start = time.perf_counter()
        codes.add(subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode)
        times.append(time.perf_counter() - start)
    # Children of this wrapper so far; each row runs after the previous one, and the monitor
    # rows come first, so their peak is not raised by the CLI row below them.
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    # CPU time (user + system) is what the run itself costs; wall time also holds waiting for
    # dockerd and for the CPU when the host is busy.
    print(f"{label:32} peak RSS {peak_mb:5.1f} MB  wall median {statistics.median(times):.3f} s"
          f"  min {min(times):.3f} s  max {max(times):.3f} s  CPU {(cpu() - cpu0) / runs:.3f} s"
          f"  exit {sorted(codes)}  ({runs} runs)")


measure("network_monitor.py --check", ["python3", script, "--check"])
measure("network_monitor.py --json", ["python3", script, "--json"])
measure("disk_guard.py --check", ["python3", f"{scripts}/disk_guard.py", "--check"])
measure("network_repair.py --check", ["python3", f"{scripts}/network_repair.py", "--name",
                                      "watchme-network"])
measure("docker network inspect (CLI)", ["docker", "network", "inspect", "watchme-network"])
PY

# Each planned fact as the lock command's F runs it (watchme/lock.py), in a fresh python3 that
# prints the peak RSS (MiB) of everything it waited for, and the fact's class and arguments.
[ -r "$plan" ] || { echo "no fact plan at $plan (run a deploy first)"; exit 0; }
PEAK='
import json, os, resource, subprocess, sys
sudo, identity, command = sys.argv[1:4]
user = os.environ.get("SUDO_USER", "")
argv = ["sh", "-c", command] if sudo == "1" or user in ("", "root") else \
    ["runuser", "-u", user, "--", "sh", "-c", command]
subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    _, name, kwargs, _ = json.loads(identity)["fact"]
    label = f"{name} {json.dumps(kwargs)[:70]}"
except (ValueError, KeyError, TypeError):
    label = identity[:80]
print(f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:6.1f} MiB  {label}")
'
F() { python3 -c "$PEAK" "$@"; }
# The plan's Python facts (its B line) and the whole plan in one python3 (what a no-op's
# lock command runs, watchme/fact_batch.py, with -S as there): measured when that file's text is in $BATCH
# (bench/noop_memory.py sends it; this script alone on the host has no copy of it).
RUNNER='
import os, resource, subprocess, sys
subprocess.run(["python3", "-S", "-c", os.environ["BATCH"], *sys.argv[2:]], stdin=subprocess.DEVNULL,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:6.1f} MiB  {sys.argv[1]}")
'
B() { [ -z "${BATCH:-}" ] || BATCH="$BATCH" python3 -c "$RUNNER" "the plan's Python facts in one python3 (B)" B "$1"; }
W() { :; }
echo "fact plan $plan: each planned fact's peak RSS, largest first:"
# shellcheck disable=SC1090  # the plan defines nothing but F, B and W lines (watchme/prefetch.py)
{ . "$plan"
  [ -z "${BATCH:-}" ] || BATCH="$BATCH" python3 -c "$RUNNER" \
    "the whole plan in one python3 (the lock command's run_plan)" plan "$plan"
  # and the memo check's: the same with the verdict (any key: the hashing runs only when
  # the key matches, so the memo's own key is read from it)
  key=$(sed -n 's/.*"key": "\([0-9a-f]*\)".*/\1/p' /var/lib/watchme/noop-memo 2>/dev/null)
  [ -z "${BATCH:-}" ] || [ -z "${CHECK:-}" ] || BATCH="$BATCH" python3 -c "$RUNNER" \
    "the memo check: the plan and the verdict in one python3" plan "$plan" --check "$CHECK" \
    /var/lib/watchme/noop-memo /var/lib/watchme/last-deploy.json "${key:-none}" /dev/null
} | sort -rn | head -n "${4:-10}"
