"""Waiting for the lab: ports held, the controller healthy, a probe round reported.

Every wait is bounded and returns what is still missing (or raises with the reason), and
reads without sending traffic into the sites: listening ports come from
``/proc/thread-self/net/tcp`` inside the host's namespace, the controller is asked over the
management network (from inside its namespace when it has one, see :mod:`deploy.lab.enter`),
over HTTPS verified with the lab's CA and with its read token (:class:`Reader`).
"""

from __future__ import annotations

import ipaddress
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.lab.enter import call_in
from deploy.lab.netns import LabError


def listening(address: str, netns: str | None) -> set[int]:
    """Ports in LISTEN state on ``address`` (or the wildcard), IPv4, inside ``netns``."""
    want = ipaddress.IPv4Address(address).packed[::-1].hex().upper()

    def read() -> set[int]:
        out: set[int] = set()
        for line in Path("/proc/thread-self/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            ip_hex, port_hex = fields[1].split(":")
            if fields[3] == "0A" and ip_hex in (want, "00000000"):
                out.add(int(port_hex, 16))
        return out

    return call_in(netns, read)


def wait_listening(
    wanted: Mapping[str, tuple[str, str | None, frozenset[int]]], limit_s: float
) -> list[str]:
    """``wanted``: name -> (address, netns, ports). Wait until every name holds its ports;
    the names still missing some at the limit."""
    deadline = time.monotonic() + limit_s
    missing = list(wanted)
    while missing:
        missing = [n for n in missing if not wanted[n][2] <= listening(*wanted[n][:2])]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return missing


@dataclass(frozen=True)
class Reader:
    """How the lab reads from its controller: the CA that verifies its certificate (None:
    plain HTTP) and the file holding the read token (None: reads are open)."""

    ca: Path | None = None
    read_token_file: Path | None = None

    def context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.ca)) if self.ca is not None else None

    def headers(self) -> dict[str, str]:
        if self.read_token_file is None:
            return {}
        return {"Authorization": f"Bearer {self.read_token_file.read_text().strip()}"}


OPEN = Reader()


def http_get(
    url: str, netns: str | None, timeout: float = 5.0, reader: Reader = OPEN
) -> tuple[int, bytes]:
    """(status, body) of a GET, made from inside ``netns``."""
    request = urllib.request.Request(url, headers=reader.headers())
    context = reader.context()

    def fetch() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    return call_in(netns, fetch)


def wait_healthy(
    url: str, netns: str | None, limit_s: float, log: Path, reader: Reader = OPEN
) -> None:
    """Wait until ``url``/healthz answers 200; else raise with the tail of ``log``."""
    deadline = time.monotonic() + limit_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if http_get(url + "/healthz", netns, 1.0, reader)[0] == 200:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise LabError(f"the controller at {url} did not answer /healthz ({last}); its log:\n{tail}")


def last_reports(url: str, netns: str | None, reader: Reader = OPEN) -> dict[str, float]:
    """host -> unix time of its agent's last accepted batch (the controller's /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(url + "/metrics", netns, reader=reader)
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(body.decode()):
        if fam.name == "netcheck_agent_last_report_timestamp_seconds":
            for s in fam.samples:
                out[s.labels.get("host", "")] = s.value
    return out


def wait_round(
    url: str,
    netns: str | None,
    agents: Sequence[str],
    since: float,
    round_max_s: float,
    limit_s: float,
    reader: Reader = OPEN,
) -> list[str]:
    """Wait until every agent reported a round that started after ``since``; the late ones."""
    deadline = time.monotonic() + limit_s
    late = list(agents)
    while time.monotonic() < deadline:
        seen = last_reports(url, netns, reader)
        late = [a for a in agents if seen.get(a, 0.0) < since + round_max_s]
        if not late:
            break
        time.sleep(0.5)
    return late
