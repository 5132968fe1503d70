"""The no-op memo: `watchme deploy` answers "no change" in one SSH command, provably.

pyinfra's deploy is a deterministic function of its inputs and of the fact answers it
reads. A run that changed nothing, ran nothing on the host and read only facts its fact
plan holds (tasks/lock.py decides) leaves a memo on the host:

    /var/lib/watchme/noop-memo   root 0600, JSON: {"key", "answers", "commit", "facts",
                                 "operations", "warnings"} (facts: a short hash per fact, so a
                                 miss names the fact whose answer changed)

key: the inputs key of this checkout and command line for that host (inputs_key, host_key);
answers: the hash of the answers the run used (watchme/noop_answers.py). The next
`watchme deploy` with the same inputs sends ONE ssh command per host (OpenSSH, the deploy's
host key checking, known_hosts, key and port) that takes the deploy lock exactly as the
deploy does (lock_wait_seconds honoured), runs the host's fact plan, hashes the answers and
compares: same inputs and same answers mean pyinfra would change nothing again. On a match
the host records the no-op (last-deploy.json, "memo": true) and gives the lock back, and
`watchme deploy` prints "no change (memo: <host>)" (with --json: pyinfra's --json shape of
a zero-change run, from the memo's operations) and the memoized run's warnings again.
Anything else (a miss, no memo, no sudo, an SSH failure, an option the fast path does not
know) runs pyinfra as before, which writes a new memo when its run qualifies.

The inputs key covers every local thing that can change the deploy: deploy.py,
inventory.py, pyproject.toml, tasks/, watchme/, files/, templates/, group_data/, the
registry (WATCHME_REGISTRY), the installed versions of the deploy's libraries and Python,
every WATCHME_* variable but those that only say how to reach the host or steer this
command (STEERING_ENV), the files the inventory reads through them (the test host state,
the ssh config), the pyinfra options that
change the deploy (--data, --limit; lock_wait_seconds only sets how long to wait, and the
fast path honours it itself) and the commit (the deploy records it; allow_older decides on
it). Nothing of the deploy depends on the date or time (tasks/ and watchme/ audited: no
renewal window, no time-based decision), so the key holds no day.

`--full` (or WATCHME_FULL=1) always runs pyinfra. No pyinfra, pydantic or jinja2 is
imported on the fast path (tests/test_noop_memo.py checks with -X importtime).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys

from watchme import lock as wl
from watchme.fact_batch import PLAN_JSON
from watchme.spawn import Proc
from watchme.targets import DEFAULT_TESTHOST, IP_RE, entries

# (No subprocess or pathlib before the memo check's ssh has started: watchme/spawn.py.)
KEY_ENV = "WATCHME_MEMO_KEY"  # set by `watchme deploy` for the pyinfra run it starts
FULL_ENV = "WATCHME_FULL"
# How to reach and authenticate the host, where records go: never what is deployed. (Were
# the key and known_hosts paths inputs, CI's and a laptop's memos would never match.)
STEERING_ENV = {KEY_ENV, FULL_ENV, "WATCHME_RECORD_DIR", "WATCHME_SSH_KEY", "WATCHME_KNOWN_HOSTS"}
INPUT_FILES = ("deploy.py", "inventory.py", "pyproject.toml")
INPUT_DIRS = ("tasks", "watchme", "files", "templates", "group_data")
LIBRARIES = ("pyinfra", "paramiko", "jinja2", "pyyaml", "pydantic", "crossplane", "ruamel.yaml")
# pyinfra options the fast path understands; any other one runs pyinfra.
FLAGS = {"-y", "--yes", "--json", "-v", "-vv", "-vvv", "--debug"}
VALUED = {"--data", "--limit"}
NOT_INPUT_DATA = {"lock_wait_seconds"}  # how long to wait for the lock, not what is deployed


class Options:
    """The command line as the fast path reads it. (Plain classes here: dataclasses imports
    inspect, ~15 ms before ssh can start.)"""

    def __init__(self, full: bool = False):
        self.json = False
        self.data: list[str] = []
        self.limits: list[str] = []
        self.full = full
        self.fast = True  # False: an option the fast path does not know (or --dry)
        self.pyinfra_args: list[str] = []


def parse_args(args: list[str], env: dict | None = None) -> Options:
    env = os.environ if env is None else env
    o = Options(full=env.get(FULL_ENV, "") not in ("", "0"))
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, inline = a.partition("=")
        if a == "--full":
            o.full = True
        elif a in FLAGS:
            o.json = o.json or a == "--json"
            o.pyinfra_args.append(a)
        elif name in VALUED and (eq or i + 1 < len(args)):
            value = inline if eq else args[i + 1]
            i += 0 if eq else 1
            (o.data if name == "--data" else o.limits).append(value)
            o.pyinfra_args += [name, value]
        else:
            o.fast = False
            o.pyinfra_args.append(a)
        i += 1
    return o


def _files(root: Path) -> list[Path]:
    from pathlib import Path
    root = Path(root)
    found = [root / f for f in INPUT_FILES]
    for d in INPUT_DIRS:
        found += [p for p in (root / d).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return sorted(found)


def _versions() -> dict[str, str]:
    """Installed distribution -> version, from the dist-info names on sys.path (importlib's
    metadata costs 35 ms of imports; this reads a few directory listings)."""
    found: dict[str, str] = {}
    for folder in sys.path:
        try:
            names = os.listdir(folder or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info") and "-" in name:
                dist, _, version = name[:-len(".dist-info")].rpartition("-")
                found.setdefault(re.sub(r"[-_.]+", "_", dist).lower(), version)
    return found


def _file_digest(path: str | Path) -> str:
    import hashlib
    from pathlib import Path
    try:
        return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
    except OSError:
        return "-"


def inputs_key(root: Path, env: dict, options: Options, commit: str) -> str:
    """sha256 over everything local that can change the deploy (module docstring)."""
    import hashlib  # (after ssh started: fast_path)
    from pathlib import Path
    root = Path(root)
    h = hashlib.sha256()

    def add(*parts: str) -> None:
        for part in parts:
            h.update(part.encode("utf-8", "surrogateescape") + b"\0")

    add("watchme noop memo v1", commit, sys.version)
    for path in _files(root):
        add(str(path.relative_to(root)), hashlib.sha256(path.read_bytes()).hexdigest())
    versions = _versions()
    for dist in LIBRARIES:
        add(dist, versions.get(re.sub(r"[-_.]+", "_", dist).lower(), "-"))
    for k in sorted(env):
        if k.startswith("WATCHME_") and k not in STEERING_ENV:
            add("env", k, env[k])
    registry = env.get("WATCHME_REGISTRY")
    add("registry", _file_digest(registry) if registry else "default")
    add("testhost", _file_digest(env.get("WATCHME_TESTHOST") or DEFAULT_TESTHOST))
    config = env.get("WATCHME_SSH_CONFIG") or str(Path.home() / ".ssh" / "config")
    add("ssh config", _file_digest(config))
    for item in options.data:
        if item.partition("=")[0].strip() not in NOT_INPUT_DATA:
            add("data", item)
    for item in options.limits:
        add("limit", item)
    return h.hexdigest()


def host_key(key: str, name: str) -> str:
    """The memo key of one inventory host (tasks/lock.py computes the same)."""
    import hashlib
    return hashlib.sha256(f"{key}\0{name}".encode()).hexdigest()


# -- the targets, as inventory.py would list them, without pyinfra -----------------------

class Target:
    def __init__(self, name: str, group: str, ssh: list[str]):
        self.name, self.group = name, group
        self.ssh = ssh  # the OpenSSH command up to (and with) the destination

    def __eq__(self, other):
        return isinstance(other, Target) and vars(self) == vars(other)

    def __repr__(self):
        return f"Target({self.name!r}, {self.group!r}, {self.ssh!r})"


class NoFastPath(Exception):
    """The fast path cannot stand in for pyinfra here; the message says why."""


# The key exchanges of pyinfra's own connection (paramiko's list, without its SHA-1 ones),
# in its order: the memo check carries less than the deploy it stands in for (which uploads
# the .env files over paramiko's curve25519), and OpenSSH 9.x's default, sntrup761x25519,
# costs the laptop ~0.12 s of CPU per connection (its post-quantum key generation), a fifth
# of a no-op deploy here.
KEX = ("curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,ecdh-sha2-nistp384,"
       "ecdh-sha2-nistp521,diffie-hellman-group16-sha512,diffie-hellman-group-exchange-sha256,"
       "diffie-hellman-group14-sha256")


def _ssh_base(known_hosts: str | None, key: str | None, config: str | None) -> list[str]:
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", "ConnectTimeout=15", "-o", "ControlMaster=no", "-o", "ControlPath=none",
           "-o", f"KexAlgorithms={KEX}"]
    if config:
        cmd += ["-F", os.path.expanduser(config)]
    if known_hosts:
        cmd += ["-o", f"UserKnownHostsFile={os.path.expanduser(known_hosts)}"]
    if key:
        cmd += ["-i", os.path.expanduser(key), "-o", "IdentitiesOnly=yes"]
    return cmd


def _config_sets_user(base: list[str], alias: str) -> bool:
    """Whether the ssh config names a User for this alias (else pyinfra's default user)."""
    import subprocess

    def user(cmd: list[str]) -> str:
        out = subprocess.run([*cmd, "-G", alias], capture_output=True, text=True, timeout=10)
        return next((l.split(" ", 1)[1] for l in out.stdout.splitlines()
                     if l.startswith("user ")), "")
    bare = [c for c in base if c != "-F"]
    if "-F" in base:
        bare.remove(base[base.index("-F") + 1])
    return user(base) != user([*bare, "-F", "/dev/null"])


def targets(env: dict) -> list[Target]:
    """The inventory's hosts (watchme/targets.py's rules) with their OpenSSH commands."""
    if env.get("WATCHME_REPLAY_DIR"):
        raise NoFastPath("an offline preview (WATCHME_REPLAY_DIR)")
    spec = env.get("WATCHME_HOSTS", "")
    if not spec.strip():
        path = env.get("WATCHME_TESTHOST") or DEFAULT_TESTHOST
        try:
            with open(path, encoding="utf-8") as f:
                h = json.loads(f.read())
            base = _ssh_base(h["known_hosts"], h["key"], None)
            return [Target(f"127.0.0.1:{h['port']}", "testhost",
                           [*base, "-p", str(int(h["port"])), "-l", h["user"], "127.0.0.1"])]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise NoFastPath(f"no readable test host state ({e})") from e
    base = _ssh_base(env.get("WATCHME_KNOWN_HOSTS"), env.get("WATCHME_SSH_KEY"),
                     env.get("WATCHME_SSH_CONFIG"))
    out: list[Target] = []
    for item, m, address, name in entries(spec):
        if not m:
            raise NoFastPath(f"WATCHME_HOSTS entry {item!r} is not valid")
        cmd = list(base)
        if m["port"]:
            cmd += ["-p", m["port"]]
        if m["user"]:
            cmd += ["-l", m["user"]]
        elif m["host"].startswith("[") or IP_RE.search(address) or \
                not _config_sets_user(base, address):
            cmd += ["-l", env.get("WATCHME_SSH_USER") or "ubuntu"]
        # A name that is no address is resolved by OpenSSH's own config, as pyinfra does.
        out.append(Target(name, "production", [*cmd, address]))
    if not out:
        raise NoFastPath("WATCHME_HOSTS names no host")
    return out


def limited(hosts: list[Target], limits: list[str]) -> list[Target]:
    """pyinfra's --limit: host names or group names, glob patterns, comma lists."""
    if not limits:
        return hosts
    import fnmatch
    patterns = [p.strip() for item in limits for p in item.split(",") if p.strip()]
    return [t for t in hosts if any(fnmatch.fnmatch(t.name, p) or fnmatch.fnmatch(t.group, p)
                                    for p in patterns)]


def lock_wait(options: Options, root: Path) -> int:
    """lock_wait_seconds as the deploy reads it: --data, else group_data (a plain int)."""
    for item in reversed(options.data):
        k, _, v = item.partition("=")
        if k.strip() == "lock_wait_seconds":
            if not v.strip().isdigit():
                raise NoFastPath(f"--data lock_wait_seconds={v!r} is no plain number")
            return int(v)
    found = None
    for name in ("all.py", "production.py", "testhost.py"):
        path = os.path.join(root, "group_data", name)
        text = ""
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                text = f.read()
        m = re.search(r"^lock_wait_seconds\s*=\s*(\S+)", text, re.M)
        if m and name != "all.py":
            raise NoFastPath(f"group_data/{name} sets lock_wait_seconds per group")
        if m:
            if not m[1].isdigit():
                raise NoFastPath("group_data/all.py: lock_wait_seconds is no plain number")
            found = int(m[1])
    return found or 0


# -- one host: the memo check -------------------------------------------------------------

class Answer:
    def __init__(self, target: Target, status: str, why: str = "", lock: dict | None = None,
                 record: dict | None = None, facts_blob: str = "", memo: dict | None = None):
        self.target = target
        self.status = status  # hit | miss | held | error
        self.why = why
        self.memo = memo or {}
        self.lock = lock or {}
        self.facts_blob = facts_blob
        self.record = record or {}


class Check:
    """The memo check of one host: one ssh command, the script in its command line (on stdin
    it would cost a round trip more: OpenSSH sends stdin once the session is open), started
    at once. The inputs key is not in it: finish() sends it on stdin, computed while ssh
    connects, and the host reads it only after its fact plan ran (KEY=-)."""

    def __init__(self, target: Target, holder: dict, wait: int, want_facts: bool):
        self.target, self.wait = target, wait
        self.record = {"status": "ok", "started": holder["since"], "finished": holder["since"],
                       "by": holder["by"], "commit": holder["commit"], "changed": 0,
                       "changed_operations": [], "memo": True}
        checker = os.path.join(os.path.dirname(__file__), "noop_answers.py")
        with open(checker, encoding="utf-8") as f:
            source = f.read()
        command = wl.opening("memo", holder=holder, record=self.record, wait=wait,
                             facts=want_facts, key="-", check=source)
        self.proc, self.error = None, ""
        try:
            self.proc = Proc([*target.ssh, command], stdin=True)
        except OSError as e:
            self.error = f"ssh: {e}"

    def finish(self, key: str) -> Answer:
        """Send the host's inputs key (host_key) and read the verdict."""
        target, proc = self.target, self.proc
        if proc is None:
            return Answer(target, "error", self.error)
        try:
            stdout, stderr = proc.communicate(host_key(key, target.name) + "\n",
                                              timeout=self.wait + 600)
        except (OSError, TimeoutError) as e:
            proc.kill()
            return Answer(target, "error", f"ssh: {e}")
        return _answer(target, self.record, proc.returncode, stdout, stderr)


def _answer(target: Target, record: dict, returncode: int, stdout: str, stderr: str) -> Answer:
    """The memo command's output read: hit, miss (and why), held or error."""
    lines = stdout.splitlines()
    lock_lines, rest = wl.split(lines)
    out = wl.parse(lock_lines)
    answer = Answer(target, "miss", lock=out, record=record,
                    facts_blob=rest[0] if rest else "")
    verdict = out.get("memo", "")
    if out.get("status") == "held":
        answer.status, answer.why = "held", "the deploy lock is held"
    elif returncode != 0 or not verdict:
        answer.status = "error"
        answer.why = (stderr.strip().splitlines() or [f"ssh exit {returncode}"])[-1] \
            if returncode != 0 else f"status={out.get('status', '?')}"
    elif verdict.startswith("hit "):
        try:
            answer.memo = json.loads(verdict[4:])
            answer.status = "hit"
        except ValueError:
            answer.why = "unreadable memo"
    else:
        answer.why = verdict.removeprefix("miss ")
    return answer


def fact_record(name: str, blob: str) -> dict:
    """The fact record (watchme/prefetch.py's format) from the memo check's packed output."""
    import base64
    import gzip
    text = gzip.decompress(base64.b64decode(blob)).decode("utf-8", "surrogateescape")
    plan_text, _, output = text.partition(wl.FACTS + "\n")
    from watchme.noop_answers import blocks_from_output
    answers = {identity: (rc, lines) for rc, identity, lines in blocks_from_output(output)}
    facts = []
    body = plan_text.split("\n", 1)[1] if plan_text.startswith("#") else plan_text  # header
    for identity, command in planned_commands(body):
        if identity in answers:
            rc, out = answers[identity]
            facts.append({"command": command, "executor": json.loads(identity)["fact"][3],
                          "rc": rc, "stdout": out})
    return {"version": 1, "host": name, "facts": facts}


def planned_commands(body: str) -> list[tuple[str, str]]:
    """[(identity, command)] of a fact plan's body (watchme/prefetch.py plan_text): the
    `F <sudo> <identity> <command>` lines and the Python facts of its `B <json>` line."""
    for line in body.splitlines():
        if line.startswith(PLAN_JSON):  # the whole plan as JSON (watchme/fact_batch.py)
            return [(identity, command) for identity, _, command, _ in json.loads(line[3:])]
    words = shlex.split(body, comments=True)  # a quoted command may span lines (and # lines)
    out, i = [], 0
    while i < len(words):
        if words[i] == "F" and i + 3 < len(words):
            out.append((words[i + 2], words[i + 3]))
            i += 4
        elif words[i] == "B" and i > 0 and words[i - 1] == "then" and i + 1 < len(words):
            out += [(identity, spec["command"]) for identity, spec in json.loads(words[i + 1])]
            i += 2
        else:
            i += 1
    return out


# -- the command ---------------------------------------------------------------------------

def run_json(answers: list[Answer]) -> dict:
    """pyinfra --json's shape for a run in which no host changed anything."""
    plan: dict[str, dict] = {}
    hosts: dict[str, list[str]] = {}
    for a in answers:
        for op in a.memo.get("operations", []):
            plan.setdefault(op["op_hash"], op)
            hosts.setdefault(op["op_hash"], []).append(a.target.name)
    operations = [{**op, "hosts": len(hosts[h]), "success": [], "error": [],
                   "no_change": sorted(hosts[h])} for h, op in plan.items()]
    n = sum(len(v) for v in hosts.values())
    return {"plan": [{**op, "hosts_with_change": [], "hosts_with_conditional_change": []}
                     for op in plan.values()],
            "results": {"operations": operations,
                        "totals": {"hosts": n, "success": 0, "error": 0, "no_change": n},
                        "failed_hosts": []}}


def _save_records(answers: list[Answer], directory: str) -> None:
    from pathlib import Path
    Path(directory).mkdir(parents=True, exist_ok=True)
    for a in answers:
        name = wl.safe_name(a.target.name)
        last = a.record if a.status == "hit" else a.lock.get("record")
        lock = a.lock.get("holder") if a.status == "held" else None
        (Path(directory) / f"{name}.json").write_text(json.dumps(
            {"host": a.target.name, "last_deploy": last, "lock": lock}, indent=2) + "\n")
        if a.status == "hit" and a.facts_blob:
            (Path(directory) / f"{name}.facts.json").write_text(
                json.dumps(fact_record(a.target.name, a.facts_blob), indent=1) + "\n")


def _lock_notes(a: Answer, wait: int) -> None:
    prefix = f"    [{a.target.name}] "
    if a.lock.get("stale"):
        print(f"{prefix}took over the deploy lock left by "
              f"{wl.describe_holder(a.lock['stale'])}: its SSH session had ended", file=sys.stderr)
    if a.status == "held":
        what = ("its remote work is still running" if a.lock.get("alive") == "work"
                else f"its SSH session, pid {a.lock.get('holder_pid')}, is alive")
        waited = f" (waited {a.lock.get('waited')} s)" if wait else ""
        print(f"{prefix}another deploy holds the lock: {wl.describe_holder(a.lock.get('holder'))}"
              f"; {what}{waited}; fix: wait for it to end, raise lock_wait_seconds, or "
              "`watchme unlock` if it is stale", file=sys.stderr)


def fast_path(options: Options, root: Path, env: dict) -> tuple[int | None, str]:
    """(exit code, "") when the memo answered for every host; (None, why) to run pyinfra.

    The inputs key is returned in env[KEY_ENV] either way (for pyinfra to write the memo)."""
    hosts, wait, why = [], 0, ""
    if options.full:
        why = "--full"
    elif not options.fast:
        why = "an option the memo does not cover"
    else:
        try:
            hosts = limited(targets(env), options.limits)
            wait = lock_wait(options, root)
        except NoFastPath as e:
            hosts, why = [], str(e)
        if not hosts and not why:
            why = "--limit matches no host the memo knows"
    holder = wl.holder(env)
    # ssh first: the connection (~0.2 s here, ~1 s over a 100 ms link) hides the inputs key
    checks = [] if why else [Check(t, holder, wait, bool(env.get("WATCHME_RECORD_DIR")))
                             for t in hosts]
    env[KEY_ENV] = inputs_key(root, env, options, holder["commit"])
    if why:
        return None, why

    def one(c: Check) -> Answer:
        return c.finish(env[KEY_ENV])
    if len(checks) == 1:  # (concurrent.futures and logging: ~10 ms of imports for nothing)
        answers = [one(checks[0])]
    else:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(len(checks)) as pool:
            answers = list(pool.map(one, checks))
    for a in answers:
        _lock_notes(a, wait)
    if env.get("WATCHME_RECORD_DIR"):
        _save_records(answers, env["WATCHME_RECORD_DIR"])
    held = [a for a in answers if a.status == "held"]
    others = [a for a in answers if a.status not in ("hit", "held")]
    if others:
        return None, "; ".join(f"{a.target.name}: {a.why}" for a in others)
    if held:
        print("--> pyinfra error: the deploy lock is held on "
              + ", ".join(a.target.name for a in held), file=sys.stderr)
        return 1, ""
    for a in answers:
        for level, message in a.memo.get("warnings") or []:
            print(f"    [{a.target.name}] {message}", file=sys.stderr)
    human = sys.stderr if options.json else sys.stdout
    for a in answers:
        print(f"no change (memo: {a.target.name})", file=human)
    if options.json:
        print(json.dumps(run_json(answers)))
    return 0, ""
