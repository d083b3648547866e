"""The agent's own health: ``/healthz`` and ``/metrics`` (built from live state at scrape).

A few lines of HTTP/1.1 on :func:`asyncio.start_server`, standard library only: ``GET`` (or
``HEAD``) of the two paths, one request per connection, the request head bounded in size and
time, so a stuck or hostile client costs one short-lived connection and nothing more. At most
:data:`MAX_CONNECTIONS` are open at once; a new one past that closes the connection that has
waited longest without sending its request, so idle connections, however many, never keep a
liveness probe from its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from netcheck.agent import __version__, exposition
from netcheck.agent.exposition import Family
from netcheck.agent.inputs import host_port
from netcheck.agent.wire import PROBE_STATES, ListenState, ProbeResult

if TYPE_CHECKING:
    from netcheck.agent.link import Link
    from netcheck.agent.listeners import ListenerSet

log = logging.getLogger(__name__)

LISTEN_STATES: tuple[ListenState, ...] = ("listening", "occupied", "denied", "error")
MAX_REQUEST_HEAD = 8 * 1024
REQUEST_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 64
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


@dataclasses.dataclass
class AgentState:
    """What the health endpoints report; the daemon updates it."""

    mode: str
    link: Link | None = None
    listeners: ListenerSet | None = None
    probes: Counter[str] = dataclasses.field(default_factory=Counter)
    rounds: int = 0
    round_failures: int = 0
    started_at: float = dataclasses.field(default_factory=time.time)

    def count(self, results: list[ProbeResult]) -> None:
        self.probes.update(r.state for r in results)
        self.rounds += 1


def metric_families(s: AgentState) -> list[Family]:
    link = s.link
    held = Counter(x.state for x in s.listeners.statuses()) if s.listeners else Counter()
    dropped = link.dropped if link else Counter()
    peers_dropped = s.listeners.peers_dropped if s.listeners else 0
    families = [
        exposition.labelled(
            "netcheck_agent_probes",
            "counter",
            "Probe results by state.",
            "state",
            ((state, s.probes.get(state, 0)) for state in PROBE_STATES),
        ),
        exposition.labelled(
            "netcheck_agent_listeners",
            "gauge",
            "Stand-in listeners by state.",
            "state",
            ((lstate, held.get(lstate, 0)) for lstate in LISTEN_STATES),
        ),
        exposition.gauge(
            "netcheck_agent_buffered_results",
            "Results waiting for the controller.",
            link.buffered if link else 0,
        ),
        exposition.labelled(
            "netcheck_agent_dropped_results",
            "counter",
            "Records dropped, by kind: results (buffer full while the controller was away, "
            "or rejected) and peer records (more than the bound between two reports).",
            "kind",
            (("result", dropped["result"]), ("peer", dropped["peer"] + peers_dropped)),
        ),
        exposition.counter(
            "netcheck_agent_rejected_batches",
            "Batches the controller refused with HTTP 400.",
            link.rejected_batches if link else 0,
        ),
    ]
    if link is not None and link.last_report is not None:
        families.append(
            exposition.gauge(
                "netcheck_agent_last_report_timestamp_seconds",
                "When the controller last accepted a batch.",
                link.last_report,
            )
        )
    families.append(
        exposition.counter("netcheck_agent_probe_rounds", "Probe rounds run.", s.rounds)
    )
    families.append(
        exposition.counter(
            "netcheck_agent_probe_round_failures",
            "Probe rounds that failed with an error (logged; the next round runs).",
            s.round_failures,
        )
    )
    if s.listeners is not None:
        families += standin_families(s.listeners)
    info = exposition.Sample((("version", __version__), ("mode", s.mode)), 1)
    families.append(
        exposition.Family("netcheck_agent_info", "gauge", "Agent version and probe mode.", (info,))
    )
    return families


def standin_families(ls: ListenerSet) -> list[Family]:
    """The stand-in listeners' connections: open, their caps, and those closed at a cap."""
    caps = (("total", ls.caps.total), ("port", ls.caps.per_port), ("source", ls.caps.per_source))
    return [
        exposition.gauge(
            "netcheck_agent_standin_connections",
            "Conversations the stand-in listeners hold now.",
            ls.open_connections,
        ),
        exposition.labelled(
            "netcheck_agent_standin_connection_limit",
            "gauge",
            "Conversations held at most: in all, per port, per source address.",
            "scope",
            caps,
        ),
        exposition.labelled(
            "netcheck_agent_standin_connections_capped",
            "counter",
            "Connections accepted and closed at once because a cap was reached, by cap.",
            "scope",
            ((scope, ls.capped.get(scope, 0)) for scope, _ in caps),
        ),
    ]


def healthz(state: AgentState) -> dict[str, Any]:
    return {
        "status": "ok",
        "version": __version__,
        "mode": state.mode,
        "registered": bool(state.link and state.link.plan),
        "rounds": state.rounds,
        "buffered_results": state.link.buffered if state.link else 0,
        "last_report": state.link.last_report if state.link else None,
    }


def respond(state: AgentState, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for one request head: the whole HTTP logic, without I/O."""
    try:
        method, target, version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return 400, {"Content-Type": "text/plain"}, b"bad request\n"
    if not version.startswith("HTTP/1."):
        return 400, {"Content-Type": "text/plain"}, b"bad request\n"
    path = target.split("?", 1)[0]
    if path not in ("/healthz", "/metrics"):
        return 404, {"Content-Type": "text/plain"}, b"not found\n"
    if method not in ("GET", "HEAD"):
        return 405, {"Content-Type": "text/plain", "Allow": "GET, HEAD"}, b"GET or HEAD\n"
    if path == "/healthz":
        body = json.dumps(healthz(state)).encode()
        return 200, {"Content-Type": "application/json"}, body
    text = exposition.render(metric_families(state))
    return 200, {"Content-Type": exposition.CONTENT_TYPE}, text.encode()


def encode_response(status: int, headers: dict[str, str], body: bytes, head_only: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}".rstrip()]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


class HealthServer:
    """The running endpoint; :meth:`close` stops it and drops open connections."""

    def __init__(self, state: AgentState, request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.state = state
        self.request_timeout_s = request_timeout_s
        self.server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        # Connections that have not sent their request head yet, oldest first.
        self._idle: dict[asyncio.StreamWriter, None] = {}
        self.evicted = 0

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(
            self._handle, host, port, limit=MAX_REQUEST_HEAD, reuse_address=True
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= MAX_CONNECTIONS and self._idle:
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            self._conns.discard(oldest)  # now, not when its handler next runs
            oldest.transport.abort()
            self.evicted += 1
        self._conns.add(writer)
        self._idle[writer] = None
        try:
            if len(self._conns) > MAX_CONNECTIONS:  # every other one is answering
                return
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.request_timeout_s)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
                return
            finally:
                self._idle.pop(writer, None)
            status, headers, body = respond(self.state, head)
            writer.write(encode_response(status, headers, body, head.startswith(b"HEAD ")))
            await asyncio.wait_for(writer.drain(), self.request_timeout_s)
        except (OSError, TimeoutError) as exc:
            log.debug("health connection: %s", exc)
        finally:
            self._conns.discard(writer)
            self._idle.pop(writer, None)
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in [*self._conns, *self._idle]:
                writer.transport.abort()
            await self.server.wait_closed()
            self.server = None
            for _ in range(50):  # let the handlers see their connection gone
                if not self._conns and not self._idle:
                    break
                await asyncio.sleep(0.01)


async def start_health_server(state: AgentState, listen: str) -> HealthServer:
    """Serve ``/healthz`` and ``/metrics`` on ``HOST:PORT``; the caller closes it."""
    server = HealthServer(state)
    await server.start(*host_port(listen))
    return server
