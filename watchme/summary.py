"""`watchme summary`: pyinfra's `--json` output as a per-host table, and an exit code.

    pyinfra --json -y inventory.py deploy.py | watchme summary
    pyinfra --json --dry inventory.py deploy.py | watchme summary --markdown >> "$GITHUB_STEP_SUMMARY"
    watchme summary --json-file run.json --records DIR --log pyinfra.log

For a deploy, each host's operations are changed, unchanged or failed; once a host has
failed, pyinfra runs nothing more on it and reports its later operations as errors too,
so those are listed as "not run". For a dry run (pyinfra prints "results": null) the
plan says which operations would change each host; a host the plan never names would
change nothing. When every host fails, pyinfra prints no JSON at all: the summary then
says so, names the failures it finds in the log (--log) and the records (--records, the
local copies tasks/lock.py writes: last deploy, failed operation, lock holder).

Exit code: 0 when nothing failed, 1 when an operation or host failed or there was no
JSON to read (the run stopped before its results), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from watchme import lock as wl
from watchme.deploy import failure_lines


HOST_LINE = re.compile(r"^\s+\[(?P<host>[^\]]+)\] +(?P<text>.*)$")


class SummaryError(Exception):
    """Input that is not pyinfra's --json output."""


@dataclass
class HostReport:
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    conditional: list[str] = field(default_factory=list)  # dry run: change depends on _if
    host_failed: bool = False


@dataclass
class Summary:
    dry: bool
    hosts: dict[str, HostReport]
    failed_hosts: list[str]
    has_json: bool = True

    @property
    def ok(self) -> bool:
        return self.has_json and not self.failed_hosts and not any(
            r.failed or r.host_failed for r in self.hosts.values())


def load(text: str) -> dict | None:
    """pyinfra's JSON, or None for empty input (the run ended before printing it)."""
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise SummaryError(f"input is not JSON ({e}); pipe `pyinfra --json ...` into it") from e
    if not isinstance(data, dict) or "plan" not in data or "results" not in data:
        raise SummaryError("input is not pyinfra --json output (no \"plan\"/\"results\")")
    return data


def summarize(data: dict | None) -> Summary:
    if data is None:
        return Summary(dry=False, hosts={}, failed_hosts=[], has_json=False)
    hosts: dict[str, HostReport] = {}
    results = data["results"]
    if results is None:  # --dry: only the plan
        for op in data["plan"]:
            for name in op.get("hosts_with_change", []):
                hosts.setdefault(name, HostReport()).changed.append(op["name"])
            for name in op.get("hosts_with_conditional_change", []):
                hosts.setdefault(name, HostReport()).conditional.append(op["name"])
        return Summary(dry=True, hosts=dict(sorted(hosts.items())), failed_hosts=[])
    failed_hosts = list(results.get("failed_hosts") or [])
    for op in results["operations"]:
        for name in op.get("success", []):
            hosts.setdefault(name, HostReport()).changed.append(op["name"])
        for name in op.get("no_change", []):
            hosts.setdefault(name, HostReport()).unchanged.append(op["name"])
        for name in op.get("error", []):
            report = hosts.setdefault(name, HostReport())
            # After a host's first failure pyinfra runs nothing more there.
            if name in failed_hosts and report.failed:
                report.not_run.append(op["name"])
            else:
                report.failed.append(op["name"])
    for name in failed_hosts:
        hosts.setdefault(name, HostReport()).host_failed = True
    return Summary(dry=False, hosts=dict(sorted(hosts.items())), failed_hosts=failed_hosts)


def load_records(directory: str | None) -> dict[str, dict]:
    """host name -> {"last_deploy", "lock"} from the local copies tasks/lock.py writes."""
    if not directory or not Path(directory).is_dir():
        return {}
    out = {}
    for path in sorted(Path(directory).glob("*.json")):
        if path.name.endswith(".facts.json"):
            continue  # the fact record for the offline preview (watchme/prefetch.py)
        try:
            rec = json.loads(path.read_text())
            out[rec["host"]] = rec
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _host_notes(name: str, records: dict[str, dict]) -> list[str]:
    rec = records.get(name)
    if not rec:
        return []
    notes = []
    if rec.get("lock"):
        notes.append(f"deploy in progress: {wl.describe_holder(rec['lock'])}")
    notes.append(f"last deploy: {wl.describe_record(rec.get('last_deploy'))}")
    return notes


def headline(s: Summary) -> str:
    if not s.has_json:
        return "Run failed before pyinfra printed its results (see the log)"
    n_changed = sum(len(r.changed) for r in s.hosts.values())
    if s.dry:
        changing = [r for r in s.hosts.values() if r.changed]
        if not changing:
            return "Preview (dry run): no host would change"
        return (f"Preview (dry run): {len(changing)} host{'s' if len(changing) != 1 else ''} "
                f"would change, {n_changed} operation change{'s' if n_changed != 1 else ''}")
    n_failed = sum(len(r.failed) for r in s.hosts.values())
    state = "ok" if s.ok else "FAILED"
    return (f"Deploy {state}: {len(s.hosts)} host{'s' if len(s.hosts) != 1 else ''}, "
            f"{n_changed} changed, {n_failed} failed operation{'s' if n_failed != 1 else ''}")


def _sections(r: HostReport, dry: bool) -> list[tuple[str, list[str]]]:
    if dry:
        return [("would change", r.changed), ("may change (conditional)", r.conditional)]
    return [("failed", r.failed), ("not run (host failed earlier)", r.not_run),
            ("changed", r.changed), ("unchanged", r.unchanged)]


def render_text(s: Summary, records: dict[str, dict] | None = None, log: str = "") -> str:
    records = records or {}
    lines = [headline(s), ""]
    names = list(s.hosts) + [n for n in records if n not in s.hosts]
    if s.hosts:
        width = max(len(n) for n in s.hosts)
        cols = ["would change", "conditional"] if s.dry else ["changed", "unchanged", "failed"]
        lines.append(f"{'host':<{width}}  " + "  ".join(f"{c:>12}" for c in cols))
        for name, r in s.hosts.items():
            counts = [len(r.changed), len(r.conditional)] if s.dry else \
                [len(r.changed), len(r.unchanged), len(r.failed)]
            lines.append(f"{name:<{width}}  " + "  ".join(f"{c:>12}" for c in counts))
        lines.append("")
    for name in names:
        r = s.hosts.get(name)
        lines.append(f"{name}{'  (host failed)' if r and r.host_failed else ''}")
        for note in _host_notes(name, records):
            lines.append(f"  {note}")
        for title, ops in _sections(r, s.dry) if r else []:
            if ops and not (title == "unchanged"):
                lines.append(f"  {title}:")
                lines.extend(f"    - {op}" for op in ops)
            elif ops:
                lines.append(f"  unchanged: {len(ops)} operations")
        lines.append("")
    lines.extend(_log_failures(s, log))
    return "\n".join(lines).rstrip() + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'").replace("<", "&lt;")


def _failed_operations(log: str) -> list[str]:
    """Each failed operation's name and what its host printed for it (stderr), from the log."""
    out: list[str] = []
    op, seen = "", {}
    for line in log.splitlines():
        m = HOST_LINE.match(line)
        if line.startswith("--> Starting operation:"):
            op, seen = line[len("--> Starting operation:"):].strip(), {}
        elif m and m["text"].startswith("Error"):
            out += [f"{m['host']}: {op}", *(f"  {t}" for t in seen.get(m["host"], [])[-5:]),
                    f"  {m['text']}"]
        elif m:
            seen.setdefault(m["host"], []).append(m["text"])
    return out


def _log_failures(s: Summary, log: str) -> list[str]:
    if s.ok or not log.strip():
        return []
    # pyinfra pads host prefixes to one width when names differ: "[a:1]     Could not ..."
    found = failure_lines(re.sub(r"\] +", "] ", log)) + _failed_operations(log) + [
        line.strip() for line in log.splitlines() if "pyinfra error" in line]
    tail = [line for line in log.splitlines() if line.strip()][-15:]
    return ["Failure, from the log:", *(found or tail), ""]


def render_markdown(s: Summary, records: dict[str, dict] | None = None, log: str = "",
                    title: str | None = None) -> str:
    records = records or {}
    out = [f"### {_md(title or headline(s))}", ""]
    if title:
        out += [headline(s), ""]
    if s.hosts:
        if s.dry:
            out += ["| Host | Would change | Conditional |", "| --- | ---: | ---: |"]
            out += [f"| {_md(n)} | {len(r.changed)} | {len(r.conditional)} |"
                    for n, r in s.hosts.items()]
        else:
            out += ["| Host | Changed | Unchanged | Failed |", "| --- | ---: | ---: | ---: |"]
            out += [f"| {_md(n)}{' (failed)' if r.host_failed else ''} | {len(r.changed)} | "
                    f"{len(r.unchanged)} | {len(r.failed)} |" for n, r in s.hosts.items()]
        out.append("")
    for name in list(s.hosts) + [n for n in records if n not in s.hosts]:
        r = s.hosts.get(name)
        out += [f"**{_md(name)}**", ""]
        out += [f"- {_md(note)}" for note in _host_notes(name, records)]
        for heading, ops in _sections(r, s.dry) if r else []:
            if not ops:
                continue
            items = "".join(f"<li>{_md(op)}</li>" for op in ops)
            if heading == "unchanged":
                out.append(f"- <details><summary>{len(ops)} unchanged</summary><ul>{items}</ul>"
                           "</details>")
            else:
                out.append(f"- {heading}: <ul>{items}</ul>")
        out.append("")
    failures = _log_failures(s, log)
    if failures:
        out += [f"{failures[0]}", "", "~~~text", *(l.replace("~~~", "~ ~ ~") for l in failures[1:-1]),
                "~~~", ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="watchme summary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json-file", help="pyinfra --json output (default: standard input)")
    p.add_argument("--markdown", action="store_true", help="Markdown for $GITHUB_STEP_SUMMARY")
    p.add_argument("--records", metavar="DIR", help="the WATCHME_RECORD_DIR the deploy wrote")
    p.add_argument("--log", metavar="FILE", help="pyinfra's stderr, quoted when the run failed")
    p.add_argument("--title", help="Markdown heading (default: the headline)")
    args = p.parse_args(argv)
    try:
        text = Path(args.json_file).read_text() if args.json_file else sys.stdin.read()
        s = summarize(load(text))
    except (OSError, SummaryError) as e:
        print(f"watchme summary: {e}", file=sys.stderr)
        return 2
    log = ""
    if args.log and Path(args.log).is_file():
        log = Path(args.log).read_text(errors="replace")
    records = load_records(args.records)
    if args.markdown:
        sys.stdout.write(render_markdown(s, records, log, args.title))
    else:
        sys.stdout.write(render_text(s, records, log))
    return 0 if s.ok else 1


if __name__ == "__main__":
    sys.exit(main())
