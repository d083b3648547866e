"""Stand-in listeners: hold every inbound port of the role, log who connected, then hang up.

Each listener accepts, records the peer address it saw (:class:`PeerSeen`, one record per
port, source address and how it was seen between two reports, with the latest time; the
interface watcher, :mod:`agent.watch`, adds the SYNs it saw through :meth:`ListenerSet.saw_syn`
into the same log), sends at most a short
protocol-appropriate greeting (SSH banner, TLS handshake, authd line, iSCSI Login Response),
reads a few bytes and closes within an idle timeout. A port held by a real service is
``occupied`` (with its owner where /proc tells), a privileged port without the capability is
``denied``; neither stops the other listeners.

Nothing that connects can knock the agent over: connections are accepted by a small loop of
our own on the event loop (no ``select()``), and past a cap (:class:`ConnectionCaps`: in
all, per port, per source address) a connection is accepted, recorded and closed at once, so
a flood costs neither descriptors nor memory beyond the cap. When the process is out of
descriptors, accepting pauses briefly. Each conversation is one small
:class:`asyncio.Protocol` (no stream, no task once it runs); TLS stand-ins hand the accepted
socket to :meth:`~asyncio.loop.connect_accepted_socket` with the stand-in context, at most
:data:`MAX_TLS_SESSIONS` at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from netcheck.agent import measure
from netcheck.agent.caps import can_bind_low_ports
from netcheck.agent.procnet import port_owner
from netcheck.agent.protocols import (
    AUTHD_BANNER,
    ISCSI_BHS,
    ISCSI_LOGIN_REQUEST,
    SSH_BANNER,
    TLS_SERVICES,
    iscsi_login_response,
)
from netcheck.agent.wire import ListenerStatus, ListenSpec, PeerHow, PeerSeen, Service

log = logging.getLogger(__name__)

READ_LIMIT = 512
MAX_PEERS = 10_000
BACKLOG = 1024
# Connections accepted per wake-up of one listener, so that a flood on one port leaves the
# event loop to everything else between bursts.
ACCEPT_BURST = 64
# Out of descriptors (EMFILE/ENFILE): stop accepting on that port this long.
ACCEPT_PAUSE_S = 0.1
# TLS conversations at once: asyncio gives each a read buffer (32 KiB with
# agent.tlsbuffers). Others wait for a slot within their idle timeout (a stand-in handshake
# takes milliseconds).
MAX_TLS_SESSIONS = 32
K = TypeVar("K", int, str)
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclasses.dataclass(frozen=True)
class ConnectionCaps:
    """Conversations held at once: in all, per listening port, per source address. A peer's
    probe needs one per port and attempt, so the source cap is well above any plan's."""

    total: int = 512
    per_port: int = 128
    per_source: int = 256


class _Standin(asyncio.Protocol):
    """One conversation: greet, read up to :data:`READ_LIMIT` bytes (or an iSCSI header),
    answer where the protocol wants one, close; aborted after the idle timeout."""

    def __init__(
        self,
        service: Service,
        idle_timeout: float,
        live: set[asyncio.Transport],
        done: Callable[[], None],
    ) -> None:
        self.service = service
        self.idle_timeout = idle_timeout
        self.live = live
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.live.add(transport)
        self.timer = asyncio.get_running_loop().call_later(self.idle_timeout, transport.abort)
        if self.service == "ssh":
            transport.write(SSH_BANNER)
        elif self.service == "authd":
            transport.write(AUTHD_BANNER)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.service in measure.SERVICES and self._measure(data):
            return
        if self.service == "iscsi":
            self.head += data[: ISCSI_BHS - len(self.head)]
            if len(self.head) < ISCSI_BHS:
                return
            if self.head[0] & 0x3F == ISCSI_LOGIN_REQUEST:
                # Target error / service unavailable: a stand-in is not an iSCSI target.
                self.transport.write(iscsi_login_response(self.head, 0x03, 0x01))
        self.transport.close()  # after what was written is sent

    def _measure(self, data: bytes) -> bool:
        """A peer's measurement request (agent.measure) takes the conversation over: True
        while the request line may still be coming, or once a session runs."""
        assert self.transport is not None
        self.head += data
        request = measure.classify(self.head[: measure.HEAD_MAX])
        if request == "more":
            return True
        if request == "no":
            return False
        if self.timer is not None:
            self.timer.cancel()
        rest = self.head.partition(b"\n")[2]
        session = measure.Session(request, self.transport, self.live, self.done)
        self.done = _nothing  # the session gives the caps back
        self.transport.set_protocol(session)
        session.start(rest)
        return True

    def eof_received(self) -> bool:
        return False  # the transport closes itself (and TLS has nothing to warn about)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.live.discard(self.transport)
        self.done()


@dataclasses.dataclass(frozen=True)
class ListenerDiff:
    """What a new plan changes in the listeners (:func:`diff_listeners`)."""

    close: tuple[int, ...]  # held (or tried) and no longer planned
    start: tuple[ListenSpec, ...]  # planned and not listening: new, or a bind to try again
    update: tuple[ListenSpec, ...]  # listening and still planned, its spec changed: in place
    keep: tuple[int, ...]  # listening, planned as it is: untouched


def diff_listeners(
    listening: Mapping[int, ListenSpec], known: Iterable[int], wanted: Iterable[ListenSpec]
) -> ListenerDiff:
    """Reconcile by difference (pure): `listening` the ports held now with their specs,
    `known` every port with a state (held, or a bind that failed), `wanted` the new plan's.
    A port listening now and still planned is never closed, whatever else changed about it
    (its service or interactions are swapped in place: no flapping)."""
    want = {s.port: s for s in wanted}
    close = tuple(sorted((set(known) | set(listening)) - set(want)))
    start = tuple(want[p] for p in sorted(set(want) - set(listening)))
    update = tuple(want[p] for p in sorted(set(want) & set(listening)) if want[p] != listening[p])
    keep = tuple(p for p in sorted(set(want) & set(listening)) if want[p] == listening[p])
    return ListenerDiff(close, start, update, keep)


@dataclasses.dataclass
class _Held:
    """One port being held: its listening socket and spec."""

    spec: ListenSpec
    sock: socket.socket
    paused: asyncio.TimerHandle | None = None


class ListenerSet:
    """The stand-in listeners of one agent, reconciled against the plan's ``listen`` list."""

    def __init__(
        self,
        bind: str,
        tls_context: ssl.SSLContext | None,
        idle_timeout: float = 3.0,
        max_peers: int = MAX_PEERS,
        caps: ConnectionCaps = ConnectionCaps(),
    ) -> None:
        self.bind = bind
        self.tls_context = tls_context
        self.idle_timeout = idle_timeout
        self.caps = caps
        self.max_peers = max(1, max_peers)
        # (port, source address, how) -> (when last seen, TTL), since the last take_peers().
        self._peers: dict[tuple[int, str, PeerHow], tuple[float, int | None]] = {}
        self.peers_dropped = 0
        self._held: dict[int, _Held] = {}
        self._status: dict[int, ListenerStatus] = {}
        # Ports held earlier and released (plan change, shutdown): reported as "closed".
        self._closed: dict[int, ListenerStatus] = {}
        self.open_connections = 0
        self._per_port: Counter[int] = Counter()
        self._per_source: Counter[str] = Counter()
        # Connections accepted and closed at once, by the cap they met: total|port|source.
        self.capped: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._live: set[asyncio.Transport] = set()
        self.last_diff = ListenerDiff((), (), (), ())
        self._tls_slots: asyncio.Semaphore | None = None

    def statuses(self) -> tuple[ListenerStatus, ...]:
        """Every port's state, including ports this set stopped holding (``closed``)."""
        merged = {**self._closed, **self._status}
        return tuple(merged[p] for p in sorted(merged))

    def take_peers(self) -> tuple[PeerSeen, ...]:
        """The peers seen since the last call, oldest first: one per (port, source address,
        how), with the latest time it connected (or its SYN arrived)."""
        out = sorted(
            (
                PeerSeen(port=p, src_address=a, at=at, how=how, ttl=ttl)
                for (p, a, how), (at, ttl) in self._peers.items()
            ),
            key=_at,
        )
        self._peers.clear()
        return tuple(out)

    async def reconcile(self, specs: Iterable[ListenSpec]) -> tuple[ListenerStatus, ...]:
        """Start listeners the plan adds (and retry binds that failed), stop those it
        removes (reported ``closed``); the others keep their sockets (:func:`diff_listeners`)."""
        self.last_diff = diff = self.diff(specs)
        for port in diff.close:
            self._stop(port, released=True)
        for spec in diff.update:  # the next connection is served as the new spec says
            self._held[spec.port].spec = spec
        for spec in diff.start:
            self._stop(spec.port)
            self._closed.pop(spec.port, None)
            self._status[spec.port] = self._start(spec)
        return self.statuses()

    def diff(self, specs: Iterable[ListenSpec]) -> ListenerDiff:
        """What :meth:`reconcile` would change for `specs`."""
        listening = {
            p: h.spec for p, h in self._held.items() if self._status[p].state == "listening"
        }
        return diff_listeners(listening, self._status, specs)

    def forget_released(self) -> None:
        """Stop reporting the ports a plan dropped (their ``closed`` state, once reported, is
        old news: the controller no longer expects anything of them)."""
        self._closed.clear()

    async def close(self) -> None:
        """Stop every listener and drop open conversations; the ports held until now are
        reported ``closed`` from here on."""
        for port in list(self._status):
            self._stop(port, released=True)
        for task in list(self._tasks):
            task.cancel()
        for transport in list(self._live):
            transport.abort()
        for _ in range(50):
            if not self._tasks and not self._live:
                break
            await asyncio.sleep(0.02)

    def _stop(self, port: int, released: bool = False) -> None:
        """Stop holding `port`; with `released`, remember it as ``closed`` (if it was held)."""
        status = self._status.pop(port, None)
        held = self._held.pop(port, None)
        if held is not None:
            if held.paused is not None:
                held.paused.cancel()
            else:
                asyncio.get_running_loop().remove_reader(held.sock.fileno())
            held.sock.close()
        if released and status is not None and status.state == "listening":
            self._closed[port] = ListenerStatus(port=port, state="closed", since=time.time())

    def _start(self, spec: ListenSpec) -> ListenerStatus:
        now = time.time()
        sock = socket.socket(socket.AF_INET6 if ":" in self.bind else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.bind, spec.port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            return self._bind_failure(spec.port, exc, now)
        held = self._held[spec.port] = _Held(spec, sock)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, held)
        return ListenerStatus(port=spec.port, state="listening", since=now)

    def _bind_failure(self, port: int, exc: OSError, now: float) -> ListenerStatus:
        if exc.errno == errno.EADDRINUSE:
            owner = port_owner(port)
            log.info("port %d is occupied by %s", port, owner or "another process")
            return ListenerStatus(
                port=port, state="occupied", since=now, owner=owner, error=str(exc)
            )
        if exc.errno == errno.EACCES:
            why = "" if can_bind_low_ports() else " (no CAP_NET_BIND_SERVICE: run as root"
            why += ", or grant the capability)" if why else ""
            msg = f"binding port {port} was denied{why}"
            log.warning("%s", msg)
            return ListenerStatus(port=port, state="denied", since=now, error=msg)
        log.warning("cannot listen on %s:%d: %s", self.bind, port, exc)
        return ListenerStatus(port=port, state="error", since=now, error=str(exc))

    def _accept(self, held: _Held) -> None:
        """Accept what is waiting on one port (a burst at most), each conversation under the
        caps; past a cap, record the peer and close at once."""
        port = held.spec.port
        for _ in range(ACCEPT_BURST):
            try:
                conn, addr = held.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    self._pause(held, exc)
                    return
                continue  # ECONNABORTED and the like: that one is gone, the next may not be
            src = str(addr[0])
            self._saw(port, src)
            over = self._over_cap(port, src)
            if over is not None:
                self.capped[over] += 1
                conn.close()
                continue
            self._converse(held.spec, conn, src)

    def _pause(self, held: _Held, exc: OSError) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(held.sock.fileno())
        log.warning("port %d: %s; accepting again in %g s", held.spec.port, exc, ACCEPT_PAUSE_S)

        def resume() -> None:
            held.paused = None
            if self._held.get(held.spec.port) is held:
                loop.add_reader(held.sock.fileno(), self._accept, held)

        held.paused = loop.call_later(ACCEPT_PAUSE_S, resume)

    def saw_syn(self, port: int, src: str, ttl: int) -> None:
        """The interface watcher saw a SYN from `src` to `port`, arriving with `ttl`."""
        self._saw(port, src, "syn", ttl)

    def _saw(self, port: int, src: str, how: PeerHow = "accepted", ttl: int | None = None) -> None:
        key = (port, src, how)
        if key not in self._peers and len(self._peers) >= self.max_peers:
            del self._peers[next(iter(self._peers))]  # the oldest first seen
            self.peers_dropped += 1
        self._peers[key] = (time.time(), ttl)

    def _over_cap(self, port: int, src: str) -> str | None:
        if self.open_connections >= self.caps.total:
            return "total"
        if self._per_port[port] >= self.caps.per_port:
            return "port"
        if self._per_source[src] >= self.caps.per_source:
            return "source"
        return None

    def _converse(self, spec: ListenSpec, conn: socket.socket, src: str) -> None:
        """Count the conversation against the caps and run it; the counts are given back
        once, when the connection is gone (or its TLS handshake failed)."""
        self.open_connections += 1
        self._per_port[spec.port] += 1
        self._per_source[src] += 1
        tls = spec.service in TLS_SERVICES and self.tls_context is not None
        state = {"released": False, "slot": False}

        def release() -> None:
            if state["released"]:
                return
            state["released"] = True
            self.open_connections -= 1
            _decrement(self._per_port, spec.port)
            _decrement(self._per_source, src)
            if state["slot"] and self._tls_slots is not None:
                self._tls_slots.release()

        def factory() -> _Standin:
            return _Standin(spec.service, self.idle_timeout, self._live, release)

        async def run() -> None:
            loop = asyncio.get_running_loop()
            try:
                conn.setblocking(False)
                if not tls:
                    await loop.connect_accepted_socket(factory, conn)
                    return
                if self._tls_slots is None:
                    self._tls_slots = asyncio.Semaphore(MAX_TLS_SESSIONS)
                start = loop.time()
                await asyncio.wait_for(self._tls_slots.acquire(), self.idle_timeout)
                state["slot"] = True
                left = max(0.1, self.idle_timeout - (loop.time() - start))
                await loop.connect_accepted_socket(
                    factory, conn, ssl=self.tls_context, ssl_handshake_timeout=left
                )
            except (OSError, ssl.SSLError, TimeoutError):
                conn.close()
                release()
            except asyncio.CancelledError:
                conn.close()
                release()
                raise

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _nothing() -> None:
    pass


def _at(peer: PeerSeen) -> float:
    return peer.at


def _decrement(counter: Counter[K], key: K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
