"""The published port of a service on a non-front host answers only to the front (issue 14).

Nginx on the front reaches such a service at its host's private address and published port,
so the port is open on that host's interface. Docker's DOCKER-USER chain (traffic to
containers, after Docker's own port mapping) gets one DROP rule per port for every source
but the front's private address, marked with a comment so the deploy knows its own rules:
missing ones are inserted, ones for ports no longer placed here are deleted. The same rules
are restored by watchme-infrastructure.service after a reboot (ExecStartPost), since the
kernel forgets them. The cloud's security group should say the same (README "Several hosts").
"""

from __future__ import annotations

import re

from pyinfra import host, inventory
from pyinfra.api import FactBase, StringCommand, operation

from watchme import placement

CHAIN = "DOCKER-USER"
COMMENT = "watchme-front-only"
RULE_RE = re.compile(r"-A DOCKER-USER (?=.*--comment \"?watchme-front-only)"
                     r"(?=.*! -s (?P<source>[0-9.]+)/32)(?=.*--ctorigdstport (?P<port>\d+))")


class FrontOnlyRules(FactBase):
    """{(port, front address)} of our rules in DOCKER-USER; None when iptables or the chain
    is not there yet (Docker not installed or not started)."""

    def command(self) -> str:
        return f"iptables -S {CHAIN} 2>/dev/null || echo @@none"

    def process(self, output):
        if "@@none" in output:
            return None
        return {(int(m["port"]), m["source"]) for m in map(RULE_RE.search, output) if m}


def spec(port: int, source: str) -> list[str]:
    return ["-p", "tcp", "-m", "conntrack", "--ctorigdstport", str(port), "--ctdir", "ORIGINAL",
            "!", "-s", f"{source}/32", "-m", "comment", "--comment", COMMENT, "-j", "DROP"]


def wanted() -> set[tuple[int, str]]:
    """(port, front address) for each service placed on this host, when it is not the front."""
    if placement.is_front(host) or not placement.swarm(host, inventory):
        return set()
    front = placement.private_address(placement.front(inventory))
    return {(s.port, front) for s in placement.services_here(host, inventory)} if front else set()


def restore_commands() -> list[str]:
    """The unit's ExecStartPost lines: insert each rule unless it is there (-C)."""
    out = []
    for port, source in sorted(wanted()):
        rule = StringCommand(*spec(port, source)).get_raw_value()
        out.append(f"/bin/sh -c 'iptables -C {CHAIN} {rule} 2>/dev/null || "
                   f"iptables -I {CHAIN} {rule}'")
    return out


@operation()
def front_only(rules: set[tuple[int, str]]):
    """Exactly these DROP-unless-front rules of ours in DOCKER-USER (pyinfra has no iptables
    operation for a chain Docker owns)."""
    found = host.get_fact(FrontOnlyRules)
    if found is None and not rules:
        host.noop("no published port to restrict")
        return
    found = found or set()
    if found == rules:
        host.noop(f"{len(rules)} port(s) answer only to the front")
        return
    for port, source in sorted(found - rules):
        yield StringCommand("iptables", "-D", CHAIN, *spec(port, source))
    for port, source in sorted(rules - found):
        yield StringCommand("iptables", "-I", CHAIN, *spec(port, source))


def apply() -> None:
    if not placement.swarm(host, inventory):
        return  # one host: nothing is published to another, no extra round trip
    rules = wanted()
    ports = ", ".join(str(p) for p, _ in sorted(rules)) or "none"
    front_only(name=f"Published ports answer only to the front ({ports})", rules=rules)
