"""The fact answers of a no-op, as one hash: computed on the host and in the deploy alike.

Stdlib only, and runnable by the host's python3: `watchme deploy` sends this file's text
with the memo check (watchme/lock.py, mode memo), so the host and the deploy that wrote the
memo (watchme/prefetch.py) hash answers with the very same code.

The answers are the fact plan's output (watchme/prefetch.py): blocks of
`@@watchme-fact <rc> <identity>` followed by the fact's stdout lines. Canonical form: the
exit code as 0/1 (all pyinfra keeps), the identity (the fact, its arguments, connector
arguments and the hash of its command) and the lines, exactly as pyinfra reads them (the
plan keeps every byte of a fact's stdout, trailing empty lines too). Also hashed: the commit of the last deploy record, the one
thing outside the facts the deploy decides on (allow_older).

VOLATILE lists output lines that change between reads by themselves and that no code of
the deploy decides on (tests/test_noop_memo.py checks that no Python file of tasks/ or
watchme/ reads them): they are left out of the hash, or the memo would never match. COARSE maps an
answer to what the deploy decides on (the disk guard's percent: below the threshold or
not; a file's stat without its times; a unit running or not, enabled or not), with the
same check.
"""

import json
import re
import sys

try:  # CPython's own sha256: hashlib would load OpenSSL (+4 MiB on the host, of ~12)
    from _sha2 import sha256  # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256  # Python 3.8-3.11
    except ImportError:
        from hashlib import sha256

MARK = "@@watchme-fact"
# (fact module, fact class) -> lines left out of the hash: what changes on every read.
VOLATILE = {
    # the monitor's report says when it was made
    ("watchme.network_check", "NetworkReport"): re.compile(r'^\s*"checked_at": "[^"]*",?$'),
    # the guard's oneshot unit is inactive, activating or failed as its timer runs it; the
    # deploy reads only NeedDaemonReload of this fact (its "active" key is never read)
    ("watchme.units", "LoadedUnits"): re.compile(r"^ActiveState="),
}


def blocks_from_output(text):
    """[(rc 0|1, identity, [lines])] from the plan's raw output."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    blocks = []
    for line in lines:
        if line.startswith(MARK + " "):
            _, rc, identity = line.split(" ", 2)
            blocks.append((0 if rc == "0" else 1, identity, []))
        elif blocks:
            blocks[-1][2].append(line)
    return blocks


def _disk_percent(lines, fact_kwargs):
    """The disk guard's percentages as the deploy reads them: below the threshold or not
    (watchme/disk.py decides on `percent < threshold` only; the exact number is in an info
    line). Without this, a shared disk crossing 1 % defeats the memo."""
    threshold = fact_kwargs.get("threshold") if isinstance(fact_kwargs, dict) else None
    out = []
    for line in lines:
        m = re.match(r'^(\s*"percent(?:_after)?": )(\d+)(,?)$', line)
        if m and isinstance(threshold, int):
            side = "below" if int(m.group(2)) < threshold else "at or above"
            line = m.group(1) + '"' + side + ' the threshold"' + m.group(3)
        out.append(line)
    return out


def _stat_times(lines, fact_kwargs):
    """pyinfra's File/Directory/Link facts without atime/mtime/ctime: this deploy's
    operations decide on type, mode, owner and content, never on a time (pyinfra reads mtime
    only for apt.update/files.download with cache_time, which the deploy does not use). A
    directory's mtime moves whenever a file in it is written (the lock's own records)."""
    return [re.sub(r"atime=-?\d* mtime=-?\d* ctime=-?\d*", "atime=- mtime=- ctime=-", line)
            for line in lines]


# What LoadedUnits' process() makes of SubState and UnitFileState (watchme/units.py takes
# them from here): a unit is running or not, enabled or not.
RUNNING = ("running", "waiting", "exited", "listening", "mounted")
ENABLED = ("enabled", "static")


def _unit_states(lines, fact_kwargs):
    """`systemctl show` as LoadedUnits' process() reads it: SubState as running or not,
    UnitFileState as enabled or not. The guard's oneshot service goes dead -> start -> dead
    every time its timer runs it (every 5 minutes, for seconds on a busy host): both are
    "not running", and no deploy decision tells them apart."""
    out = []
    for line in lines:
        key, eq, value = line.partition("=")
        if eq and key == "SubState":
            line = "SubState=" + ("running" if value in RUNNING else "not running")
        elif eq and key == "UnitFileState":
            line = "UnitFileState=" + ("enabled" if value in ENABLED else "not enabled")
        out.append(line)
    return out


# (fact module, fact class) -> lines as the deploy reads them, given the fact's arguments.
COARSE = {("watchme.disk", "DockerDiskUsage"): _disk_percent,
          ("watchme.units", "LoadedUnits"): _unit_states,
          **{("pyinfra.facts.files", name): _stat_times
             for name in ("File", "Directory", "Link", "Socket")}}


def canonical(blocks):
    """[[rc 0|1, identity, lines]] with VOLATILE lines left out."""
    facts = []
    for rc, identity, lines in blocks:
        lines = list(lines)
        try:
            fact = json.loads(identity)["fact"]
            drop = VOLATILE.get((fact[0], fact[1]))
            coarse = COARSE.get((fact[0], fact[1]))
        except (ValueError, KeyError, TypeError, IndexError):
            fact, drop, coarse = None, None, None
        if drop is not None:
            lines = [line for line in lines if not drop.match(line)]
        if coarse is not None:
            lines = coarse(lines, fact[2])
        facts.append([0 if rc == 0 else 1, identity, lines])
    # By identity: the plan's Python facts answer after its shell facts (watchme/fact_batch.py),
    # the deploy keeps them in reading order; the order is no answer.
    return sorted(facts, key=lambda f: f[1])


def _sha(value):
    return sha256(json.dumps(value, sort_keys=True).encode("utf-8", "surrogateescape")).hexdigest()


def answers_hash(blocks, commit):
    """sha256 of the canonical answers (see the module docstring) and the record's commit."""
    return _sha({"v": 1, "commit": commit or "", "facts": canonical(blocks)})


def fact_digests(blocks):
    """One short hash per fact, by identity: on a miss the host names what changed."""
    return [[_name(f[1]), _sha(f)[:16]] for f in canonical(blocks)]


def _name(identity):
    try:
        fact = json.loads(identity)["fact"]
        return fact[0] + "." + fact[1]
    except (ValueError, KeyError, TypeError, IndexError):
        return "?"


def first_difference(memo_digests, blocks, commit, memo_commit):
    """What differs from the memoized run, in words (for the miss's reason)."""
    if commit != memo_commit:
        return "the last deployed commit differs"
    now = fact_digests(blocks)
    for i, (name, digest) in enumerate(now):
        if i >= len(memo_digests) or memo_digests[i] != [name, digest]:
            return "the answer of " + name + " differs"
    return "the number of facts differs" if len(now) != len(memo_digests) else "?"


def record_commit(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.readline() or "{}").get("commit") or ""
    except (OSError, ValueError, AttributeError):
        return ""


def host_check(memo_path, record_path, key, output_path):
    """On the host: 'hit <memo JSON>' when the memo holds this key and these answers."""
    with open(output_path, encoding="utf-8", errors="surrogateescape") as f:
        return verdict(memo_path, record_path, key, f.read())


def verdict(memo_path, record_path, key, text):
    """host_check over the plan's output text (watchme/fact_batch.py calls it in-process)."""
    try:
        with open(memo_path, encoding="utf-8") as f:
            memo = json.loads(f.read())
    except (OSError, ValueError):
        return "miss no memo on the host"
    if not isinstance(memo, dict) or memo.get("key") != key:
        return "miss the inputs differ from the memoized run's"
    blocks = blocks_from_output(text)
    if not blocks:
        return "miss no fact plan on the host"
    commit = record_commit(record_path)
    if answers_hash(blocks, commit) != memo.get("answers"):
        why = first_difference(memo.get("facts") or [], blocks, commit, memo.get("commit"))
        return "miss the host's answers differ from the memoized run's: " + why
    return "hit " + json.dumps({k: memo.get(k) for k in ("operations", "warnings")})


if __name__ == "__main__":
    print("memo=" + host_check(*sys.argv[1:5]))
