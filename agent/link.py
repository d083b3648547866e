"""The controller link: register, then deliver results in batches, buffering while away.

The transport is a small protocol (:class:`Transport`); :class:`HttpTransport` speaks HTTPS
with a client certificate (mutual TLS, the context swapped in place at renewal by
:meth:`HttpTransport.use_ssl_context`), or plain HTTP with the shared bearer token of
insecure labs. A refused credential (401, 403, or a controller certificate that fails our CA)
is an :class:`AuthError`, so the daemon can tell it from an outage.

Results and peer records wait in a :class:`~netcheck.agent.spool.Spool` (on disk with a spool
directory: they survive a restart, ``kill -9`` included); each batch is read from its oldest
records, and only the records the controller answered for are deleted. Nothing is lost
silently: records beyond the bound are dropped oldest first and counted by kind, and the
count of dropped results travels in ``ResultBatch.dropped``.

Plans follow the site: every answer of the controller carries the digest of this agent's
current plan (``plan_digest``: in the plan itself at registration, in the answer to a batch,
:class:`~netcheck.agent.wire.ResultsAck`). An answer whose digest is not the plan's marks the
plan :attr:`Link.stale`; :meth:`Link.refresh` then registers again for the new plan (the
buffered results stay as they are), and :attr:`Link.plan_changed` tells the daemon to
reconcile its listeners and checks. :meth:`Link.check_plan` asks on purpose: before a round.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from netcheck.agent import httpc
from netcheck.agent.errors import AuthError, InputError, LinkError, TlsRefused, TransportError
from netcheck.agent.spool import Kind, Spool
from netcheck.agent.wire import (
    MAX_REQUEST_REPORTS,
    AgentRequest,
    ListenerStatus,
    PeerSeen,
    Plan,
    ProbeResult,
    Registration,
    RequestExchange,
    RequestReport,
    ResultBatch,
    WireError,
    decode,
    encode,
)

log = logging.getLogger(__name__)

REGISTER_PATH = "/api/v1/register"
RESULTS_PATH = "/api/v1/results"
REQUESTS_PATH = "/api/v1/agent-requests"
# Reports kept for the controller at most (the oldest "running" ones go first).
MAX_REPORTS = 256

T = TypeVar("T")
__all__ = ["AuthError", "HttpTransport", "Link", "LinkError", "Transport", "TransportError"]
REFUSED = (401, 403)
_DIGEST = re.compile(r"[0-9a-f]{64}")


class Transport(Protocol):
    async def post(self, path: str, payload: Any) -> tuple[int, Any]:
        """POST JSON `payload` to `path`: (HTTP status, decoded JSON body or None)."""
        ...

    async def close(self) -> None: ...


class HttpTransport:
    """HTTP(S): one POST per call on one kept-alive :class:`agent.httpc.Connection` (the
    standard library's ``http.client``, in a thread).

    ``ssl_context`` verifies an ``https`` controller (default: the system's trust store);
    with a client certificate loaded it is mutual TLS, and `token` may be None. A `token`
    goes in ``Authorization: Bearer``. ``timeout_s`` bounds each step (connect, send, each
    read).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if token is not None and any(c in token for c in "\r\n\0"):
            raise InputError("the token holds a line break or a NUL")
        # A bad URL fails here, not at the first request.
        self._conn = httpc.Connection(self.base_url, timeout_s, ssl_context)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout_s = timeout_s

    def use_ssl_context(self, ssl_context: ssl.SSLContext) -> None:
        """From the next request on, use `ssl_context` (a renewed client certificate)."""
        self._conn.use_context(ssl_context)

    def __repr__(self) -> str:  # never show the token
        return f"HttpTransport({self.base_url!r})"

    async def post(self, path: str, payload: Any) -> tuple[int, Any]:
        url = self.base_url + path
        body = json.dumps(payload, separators=(",", ":")).encode()
        try:
            resp = await asyncio.to_thread(self._conn.exchange, "POST", path, body, self._headers)
        except TimeoutError as exc:
            raise TransportError(f"{url}: no answer within {self._timeout_s:g} s") from exc
        except ssl.SSLCertVerificationError as exc:
            raise TlsRefused(f"{url}: the controller's certificate is not trusted: {exc}") from exc
        except ssl.SSLError as exc:
            if _refused_certificate(exc):
                raise TlsRefused(f"{url}: the controller refused our certificate: {exc}") from exc
            raise TransportError(f"{url}: {type(exc).__name__} {exc}") from exc
        except (OSError, httpc.HttpError) as exc:
            raise TransportError(f"{url}: {type(exc).__name__} {exc}") from exc
        try:
            answer = json.loads(resp.body) if resp.body else None
        except ValueError:
            answer = None
        return resp.status, answer

    async def close(self) -> None:
        """Close the kept-alive connection."""
        self._conn.close()


class Link:
    """Registration, the bounded result buffer (`spool`, in memory if none is given) and
    batched delivery."""

    def __init__(
        self,
        transport: Transport,
        registration: Registration,
        buffer_size: int = 50_000,
        batch_size: int = 1_000,
        spool: Spool | None = None,
    ) -> None:
        self.transport = transport
        self.registration = registration
        self.spool = spool if spool is not None else Spool(None, buffer_size)
        self.buffer_size = self.spool.bound
        self.batch_size = max(1, batch_size)
        self.plan: Plan | None = None
        self.plan_version = 0
        # An answer carried another digest than the plan's: fetch the plan again.
        self.stale = False
        # Set when a registration brought a plan that differs from the one before.
        self.plan_changed = asyncio.Event()
        self._listeners: tuple[ListenerStatus, ...] = ()
        self._listeners_dirty = False
        self._lock = asyncio.Lock()
        self.rejected_batches = 0
        self.accepted_results = 0
        self.last_report: float | None = None
        # The request channel (agent/requests.py): requests the controller handed over go to
        # `on_requests`; reports wait in `_reports` until the controller took them.
        self.on_requests: Callable[[list[AgentRequest]], None] | None = None
        self._reports: list[RequestReport] = []
        # The listeners' peer log (ListenerSet.take_peers): taken into the spool as each batch
        # is built, so the batch can say up to when its peers are complete (peers_until).
        self.peer_source: Callable[[], Iterable[PeerSeen]] | None = None

    @property
    def buffered(self) -> int:
        """Results waiting (committed to the spool)."""
        return self.spool.count("result")

    @property
    def dropped_unsent(self) -> int:
        """Results dropped and not yet reported to the controller (sent in ``dropped``)."""
        return self.spool.unsent_dropped

    @property
    def dropped_total(self) -> int:
        """Results dropped: buffer full while the controller was away, or refused (400)."""
        return self.spool.dropped["result"]

    @property
    def dropped(self) -> Counter[str]:
        """Records dropped, by kind (``result``, ``peer``)."""
        return Counter(self.spool.dropped)

    @property
    def pending(self) -> bool:
        s = self.spool
        return bool(
            s.count("result") or s.count("peer") or self._listeners_dirty or s.unsent_dropped
        )

    async def register(self) -> Plan:
        status, body = await self.transport.post(REGISTER_PATH, encode(self.registration))
        if status in REFUSED:
            raise AuthError(f"registration refused: HTTP {status} {_error_text(body)}", status)
        if status != 200:
            raise LinkError(f"registration refused: HTTP {status} {_error_text(body)}")
        try:
            plan = decode(Plan, body)
        except WireError as exc:
            raise LinkError(f"the controller sent an invalid plan: {exc}") from exc
        changed = plan != self.plan
        if changed:
            self.plan = plan
            self.plan_version += 1
            self.plan_changed.set()
        self.stale = False
        log.info(
            "registered as %s/%s: %d listeners, %d checks (plan %s%s)",
            plan.role,
            plan.host,
            len(plan.listen),
            len(plan.checks),
            plan.plan_digest[:12] or "without a digest",
            "" if changed else ", as before",
        )
        return plan

    def note_digest(self, body: Any) -> None:
        """Read the plan digest of a controller's answer: one that differs from the plan's
        marks the plan stale. An answer without one (an older controller) says nothing."""
        digest = body.get("plan_digest") if isinstance(body, dict) else None
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest) or self.plan is None:
            return
        if digest != self.plan.plan_digest and not self.stale:
            log.info(
                "the controller's plan for this agent changed (%s, ours %s): fetching it",
                digest[:12],
                self.plan.plan_digest[:12] or "without a digest",
            )
            self.stale = True

    async def refresh(self) -> bool:
        """Fetch the plan again when it is stale (registering again); True when it changed.
        Raises :class:`LinkError` when the controller cannot be reached (still stale)."""
        if not self.stale:
            return False
        version = self.plan_version
        await self.register()
        return self.plan_version != version

    async def check_plan(self) -> bool:
        """Deliver what is buffered, or an empty batch (the listener states), learning the
        plan's digest from the answer; fetch the plan when it is stale. True when the plan
        changed; raises :class:`LinkError` when the controller cannot be reached."""
        async with self._lock:
            await self._send_one()
            while self.pending:
                await self._send_one()
        return await self.refresh()

    def add(
        self,
        results: Iterable[ProbeResult] = (),
        listeners: tuple[ListenerStatus, ...] | None = None,
        peers: Iterable[PeerSeen] = (),
    ) -> None:
        """Buffer `results` and `peers` (durably, with a spool directory: when this returns
        they count as buffered), and the newest listener states."""
        if listeners is not None:
            self._listeners = listeners
            self._listeners_dirty = True
        batches: tuple[tuple[Kind, Iterable[ProbeResult | PeerSeen]], ...] = (
            ("result", results),
            ("peer", peers),
        )
        for kind, records in batches:
            bodies = [_record(r) for r in records]
            dropped = self.spool.append(kind, bodies) if bodies else 0
            if dropped:
                log.warning("%s buffer full: dropped the %d oldest", kind, dropped)

    async def flush(self) -> None:
        """Deliver everything buffered; raises :class:`LinkError` (data kept) when it cannot."""
        async with self._lock:
            while self.pending:
                await self._send_one()

    async def _send_one(self) -> None:
        until = 0.0
        if self.peer_source is not None:
            until = time.time()  # every peer seen before now is taken, below
            self.add(peers=self.peer_source())
        rows = self.spool.oldest("result", self.batch_size)
        peer_rows = self.spool.oldest("peer", self.batch_size)
        if self.spool.count("peer") > len(peer_rows):
            until = 0.0  # older peers than this batch's wait for the next ones: incomplete
        results, peers = _decode_rows(ProbeResult, rows), _decode_rows(PeerSeen, peer_rows)
        unreadable = Counter(
            {"result": len(rows) - len(results), "peer": len(peer_rows) - len(peers)}
        )
        batch = ResultBatch(
            role=self.registration.role,
            host=self.registration.host,
            results=tuple(results),
            listeners=self._listeners,
            peers=tuple(peers),
            sent_at=time.time(),
            peers_until=until,
            dropped=self.dropped_unsent,
        )
        status, body = await self._post_batch(batch)  # an exception: nothing was removed
        answered = [i for i, _ in rows] + [i for i, _ in peer_rows]
        if status == 200:
            self._offer(body)
            self.note_digest(body)
            self.spool.delete(answered, batch.dropped, unreadable)
            self.accepted_results += len(results)
            self._listeners_dirty = False
            self.last_report = time.time()
            return
        if status == 400:
            # The controller will never take this batch: drop it, counted, and go on.
            self.rejected_batches += 1
            unreadable.update({"result": len(results), "peer": len(peers)})
            self.spool.delete(answered, batch.dropped, unreadable)
            self._listeners_dirty = False
            log.error(
                "controller rejected a batch of %d results: %s", len(results), _error_text(body)
            )
            return
        if status in REFUSED:
            raise AuthError(f"results refused: HTTP {status} {_error_text(body)}", status)
        raise LinkError(f"results refused: HTTP {status} {_error_text(body)}")

    async def _post_batch(self, batch: ResultBatch) -> tuple[int, Any]:
        status, body = await self.transport.post(RESULTS_PATH, encode(batch))
        if status == 409:
            log.info("the controller does not know this agent: registering again")
            await self.register()
            status, body = await self.transport.post(RESULTS_PATH, encode(batch))
        return status, body

    # -- the request channel ----------------------------------------------------------------

    def report(self, rep: RequestReport) -> None:
        """Keep `rep` for the controller (bounded: the oldest acknowledgement goes first)."""
        self._reports.append(rep)
        if len(self._reports) > MAX_REPORTS:
            old = next((r for r in self._reports if r.state == "running"), self._reports[0])
            self._reports.remove(old)
            log.warning("request reports: more than %d waiting, dropped %s", MAX_REPORTS, old.id)

    @property
    def reports_waiting(self) -> int:
        return len(self._reports)

    def _offer(self, body: Any) -> None:
        """Hand the requests in a controller's answer to `on_requests` (bad ones logged)."""
        raw = body.get("requests") if isinstance(body, dict) else None
        if not raw or not isinstance(raw, list) or self.on_requests is None:
            return
        good: list[AgentRequest] = []
        for i, item in enumerate(raw[:MAX_REQUEST_REPORTS]):
            try:
                good.append(decode(AgentRequest, item, f"requests[{i}]"))
            except WireError as exc:
                log.error("the controller sent an invalid request: %s", exc)
        if good:
            self.on_requests(good)

    async def exchange(self) -> None:
        """Send the waiting reports (none: only ask) and take the requests handed over.

        A refused exchange (4xx: the controller will never take these reports) drops them,
        logged; an outage raises :class:`LinkError` and keeps them."""
        sending = self._reports[:MAX_REQUEST_REPORTS]
        exchange = RequestExchange(self.registration.role, self.registration.host, tuple(sending))
        status, body = await self.transport.post(REQUESTS_PATH, encode(exchange))
        if status in REFUSED:
            raise AuthError(f"request reports refused: HTTP {status} {_error_text(body)}", status)
        if status == 200 or 400 <= status < 500:
            for rep in sending:
                if rep in self._reports:
                    self._reports.remove(rep)
            if status != 200:
                log.error(
                    "controller refused %d request report(s): %s", len(sending), _error_text(body)
                )
            self._offer(body)
            return
        raise LinkError(f"request reports refused: HTTP {status} {_error_text(body)}")


def _record(item: ProbeResult | PeerSeen) -> bytes:
    return json.dumps(encode(item), separators=(",", ":")).encode()


def _decode_rows(cls: type[T], rows: list[tuple[int, bytes]]) -> list[T]:
    """The records of `rows` that still decode (a spool written by another version may hold
    some that do not: those are dropped, counted by the caller)."""
    out: list[T] = []
    for _, body in rows:
        try:
            out.append(decode(cls, json.loads(body)))
        except (ValueError, WireError) as exc:
            log.error("dropping an unreadable %s record from the spool: %s", cls.__name__, exc)
    return out


def _error_text(body: Any) -> str:
    """The controller's reason: ``detail`` (its words) or else ``error`` (its code)."""
    if isinstance(body, dict):
        for key in ("detail", "error"):
            if body.get(key):
                return str(body[key])
    return ""


def _refused_certificate(exc: ssl.SSLError) -> bool:
    """The controller's TLS alert says it refused our certificate (unknown CA, expired,
    revoked, bad, or none given where one is required)."""
    reason = str(getattr(exc, "reason", "") or "")
    return "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason)


class Backoff:
    """Exponential delays with full jitter: initial, ×2 each failure, capped; reset on success."""

    def __init__(self, initial: float = 1.0, cap: float = 60.0) -> None:
        import random

        self.initial = initial
        self.cap = cap
        self._next = initial
        self._rng = random.Random()

    def reset(self) -> None:
        self._next = self.initial

    def next_delay(self) -> float:
        delay = self._rng.uniform(self._next / 2, self._next)
        self._next = min(self.cap, self._next * 2)
        return delay
