"""A small in-memory Docker Engine for the host scripts' unit tests: it answers the Engine
API paths the scripts use (through docker_api.Docker.request, so the client's own paths and
404 handling are exercised) and applies connects, disconnects, removals and prunes to its
state. Every write is recorded in `writes`; `fail_after` raises Killed on the n-th write, the
way a SIGKILL would stop a script between two API calls."""

from __future__ import annotations

import copy
import json
from urllib.parse import parse_qs, unquote, urlparse

from tests.host_scripts import docker_api


class Killed(BaseException):
    """Not an Exception: nothing in the scripts may catch it, as nothing catches SIGKILL."""


def container(cid, name, state="running", networks=None, labels=None, memory=0,
              oom=False, exit_code=0, finished="2020-01-01T00:00:00.123456789Z",
              created="2020-01-01T00:00:00Z"):
    """networks: {network: (ip, [aliases])}."""
    return {"Id": (cid * 64)[:64], "Name": name, "State": state, "Labels": labels or {},
            "Networks": {n: {"IPAddress": ip, "Aliases": list(al or []),
                             "IPAMConfig": {"IPv4Address": ip} if ip else None}
                         for n, (ip, al) in (networks or {}).items()},
            "Memory": memory, "OOMKilled": oom, "ExitCode": exit_code, "FinishedAt": finished,
            "Created": created}


def network(name="watchme-network", subnet="172.27.0.0/16", gateway="172.27.0.1"):
    return {"Name": name, "Driver": "bridge", "Labels": {},
            "IPAM": {"Config": [{"Subnet": subnet, "Gateway": gateway}]}}


class FakeEngine(docker_api.Docker):
    def __init__(self, networks=(), containers=(), fail_connect=(), fail_after=None,
                 reclaim=1000):
        super().__init__(path="/nonexistent")
        self.networks = {n["Name"]: copy.deepcopy(n) for n in networks}
        self.cs = [copy.deepcopy(c) for c in containers]
        self.fail_connect = set(fail_connect)
        self.fail_after = fail_after
        self.reclaim = reclaim
        self.writes: list[tuple[str, str, dict | None]] = []
        self.on_write = None  # callable(method, path) before each write is applied

    # --- views ----------------------------------------------------------------------
    def _find(self, ref):
        return next((c for c in self.cs if c["Id"] == ref or c["Name"] == ref
                     or c["Id"].startswith(ref)), None)

    def _list_view(self, c):
        return {"Id": c["Id"], "Names": [f"/{c['Name']}"], "State": c["State"],
                "Labels": c["Labels"],
                "NetworkSettings": {"Networks": {n: {"IPAddress": ep["IPAddress"], "Aliases": None}
                                                 for n, ep in c["Networks"].items()}}}

    def _inspect_view(self, c):
        nets = copy.deepcopy(c["Networks"])
        for ep in nets.values():  # inspect adds the short id
            ep["Aliases"] = ep["Aliases"] + [c["Id"][:12]]
        return {"Id": c["Id"], "Name": f"/{c['Name']}", "Created": c["Created"],
                "State": {"Status": c["State"], "Running": c["State"] == "running",
                          "OOMKilled": c["OOMKilled"], "ExitCode": c["ExitCode"],
                          "FinishedAt": c["FinishedAt"]},
                "Config": {"Labels": c["Labels"]}, "HostConfig": {"Memory": c["Memory"]},
                "NetworkSettings": {"Networks": nets}, "SizeRw": 100}

    # --- the API ----------------------------------------------------------------------
    def request(self, method, path, body=None, timeout=None):
        url = urlparse(path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        if method != "GET":
            if self.on_write:
                self.on_write(method, path)
            if self.fail_after is not None and len(self.writes) >= self.fail_after:
                raise Killed(f"killed before {method} {path}")
            self.writes.append((method, path, copy.deepcopy(body)))
        if method == "GET":
            return self._get(parts, query)
        if method == "DELETE":
            return self._delete(parts)
        return self._post(parts, body)

    def _get(self, parts, query):
        if parts == ["info"]:
            return 200, {"DockerRootDir": "/var/lib/docker"}
        if parts[0] == "networks":
            n = self.networks.get(parts[1])
            return (200, n) if n else (404, {"message": "network not found"})
        if parts == ["containers", "json"]:
            filters = json.loads(query["filters"][0]) if "filters" in query else {}
            out = [c for c in self.cs
                   if all(c["State"] in filters.get("status", [c["State"]]) for _ in [0])
                   and all(n in c["Networks"] for n in filters.get("network", []))]
            return 200, [self._list_view(c) for c in out]
        if parts[0] == "containers":
            c = self._find(parts[1])
            return (200, self._inspect_view(c)) if c else (404, {"message": "no such container"})
        raise AssertionError(parts)

    def _delete(self, parts):
        if parts[0] == "networks":
            if any(parts[1] in c["Networks"] and c["State"] == "running" for c in self.cs):
                return 403, {"message": "network has active endpoints"}
            self.networks.pop(parts[1])
            return 204, None
        c = self._find(parts[1])
        self.cs.remove(c)
        return 204, None

    def _post(self, parts, body):
        if parts == ["networks", "create"]:
            ipam = body["IPAM"]["Config"][0]
            self.networks[body["Name"]] = {**network(body["Name"], ipam["Subnet"], ipam["Gateway"]),
                                           "IPAM": {"Config": [dict(ipam)]}}  # IPRange too
            return 201, {"Id": "new"}
        if parts[0] == "networks" and parts[2] == "disconnect":
            c = self._find(body["Container"])
            if c is None or parts[1] not in c["Networks"]:
                return 400, {"message": "container is not connected to the network"}
            c["Networks"].pop(parts[1])
            return 200, None
        if parts[0] == "networks" and parts[2] == "connect":
            c = self._find(body["Container"])
            ep = body.get("EndpointConfig") or {}
            ip = (ep.get("IPAMConfig") or {}).get("IPv4Address") or "172.27.9.9"
            if ip in self.fail_connect or parts[1] not in self.networks:
                return 400, {"message": f"Address already in use: {ip}"}
            c["Networks"][parts[1]] = {"IPAddress": ip, "Aliases": list(ep.get("Aliases") or []),
                                       "IPAMConfig": ep.get("IPAMConfig")}
            return 200, None
        if parts[1] == "prune":
            return 200, {"SpaceReclaimed": self.reclaim}
        raise AssertionError(parts)

    # --- for assertions -------------------------------------------------------------------
    def ip(self, name, net="watchme-network"):
        ep = self._find(name)["Networks"].get(net)
        return ep and ep["IPAddress"]

    def aliases(self, name, net="watchme-network"):
        return self._find(name)["Networks"][net]["Aliases"]
