"""Stand-in listeners: hold every inbound port of the role, log who connected, then hang up.

Each listener accepts, records the peer address it saw (:class:`PeerSeen`), sends at most a
short protocol-appropriate greeting (SSH banner, TLS handshake, authd line, iSCSI Login
Response), reads a few bytes and closes within an idle timeout. A port held by a real
service is ``occupied`` (with its owner where /proc tells), a privileged port without the
capability is ``denied``; neither stops the other listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Iterable

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
from netcheck.agent.wire import ListenerStatus, ListenSpec, PeerSeen

log = logging.getLogger(__name__)

READ_LIMIT = 512
MAX_PEERS = 10_000
MAX_CONNECTIONS = 512
# TLS conversations at once: asyncio gives each a 256 KiB read buffer. Others wait for a
# slot within their idle timeout (a stand-in handshake takes milliseconds).
MAX_TLS_SESSIONS = 32


class ListenerSet:
    """The stand-in listeners of one agent, reconciled against the plan's ``listen`` list."""

    def __init__(
        self,
        bind: str,
        tls_context: ssl.SSLContext | None,
        idle_timeout: float = 3.0,
        max_peers: int = MAX_PEERS,
    ) -> None:
        self.bind = bind
        self.tls_context = tls_context
        self.idle_timeout = idle_timeout
        self.peers: deque[PeerSeen] = deque(maxlen=max_peers)
        self.peers_dropped = 0
        self._servers: dict[int, asyncio.Server] = {}
        self._status: dict[int, ListenerStatus] = {}
        self._specs: dict[int, ListenSpec] = {}
        # Ports held earlier and released (plan change, shutdown): reported as "closed".
        self._closed: dict[int, ListenerStatus] = {}
        self._conns: set[asyncio.StreamWriter] = set()
        self._tls_slots: asyncio.Semaphore | None = None

    def statuses(self) -> tuple[ListenerStatus, ...]:
        """Every port's state, including ports this set stopped holding (``closed``)."""
        merged = {**self._closed, **self._status}
        return tuple(merged[p] for p in sorted(merged))

    def take_peers(self) -> tuple[PeerSeen, ...]:
        """The peers seen since the last call (oldest first)."""
        out = tuple(self.peers)
        self.peers.clear()
        return out

    async def reconcile(self, specs: Iterable[ListenSpec]) -> tuple[ListenerStatus, ...]:
        """Start listeners the plan adds, stop those it removes; keep the others running."""
        wanted = {s.port: s for s in specs}
        for port in sorted(set(self._specs) - set(wanted)):
            await self._stop(port, released=True)
        for port, spec in sorted(wanted.items()):
            if self._specs.get(port) == spec and self._status[port].state == "listening":
                continue
            await self._stop(port)
            self._closed.pop(port, None)
            self._specs[port] = spec
            self._status[port] = await self._start(spec)
        return self.statuses()

    async def close(self) -> None:
        """Stop every listener; the ports held until now are reported ``closed`` from here on."""
        for port in list(self._specs):
            await self._stop(port, released=True)
        for writer in list(self._conns):
            writer.transport.abort()
        for _ in range(50):
            if not self._conns:
                break
            await asyncio.sleep(0.02)

    async def _stop(self, port: int, released: bool = False) -> None:
        """Stop holding `port`; with `released`, remember it as ``closed`` (if it was held)."""
        self._specs.pop(port, None)
        status = self._status.pop(port, None)
        server = self._servers.pop(port, None)
        if server is not None:
            server.close()
            await server.wait_closed()
        if released and status is not None and status.state == "listening":
            self._closed[port] = ListenerStatus(port=port, state="closed", since=time.time())

    async def _start(self, spec: ListenSpec) -> ListenerStatus:
        now = time.time()
        sock = socket.socket(socket.AF_INET6 if ":" in self.bind else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.bind, spec.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            return self._bind_failure(spec.port, exc, now)
        server = await asyncio.start_server(lambda r, w: self._on_connect(spec, r, w), sock=sock)
        self._servers[spec.port] = server
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

    async def _on_connect(
        self, spec: ListenSpec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Before the first await nothing has been read yet: pause, for a ClientHello read now
        # into the plain stream's buffer would never reach start_tls and the handshake would
        # hang (it did when several peers probed one port at once).
        tls = spec.service in TLS_SERVICES and self.tls_context is not None
        if tls and isinstance(writer.transport, asyncio.ReadTransport):
            writer.transport.pause_reading()
        peer = writer.get_extra_info("peername")
        if isinstance(peer, tuple):
            if len(self.peers) == self.peers.maxlen:
                self.peers_dropped += 1
            self.peers.append(PeerSeen(port=spec.port, src_address=str(peer[0]), at=time.time()))
        self._conns.add(writer)
        try:
            if len(self._conns) <= MAX_CONNECTIONS:
                await asyncio.wait_for(self._converse(spec, reader, writer), self.idle_timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._conns.discard(writer)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _converse(
        self, spec: ListenSpec, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if spec.service in TLS_SERVICES and self.tls_context is not None:
            if self._tls_slots is None:
                self._tls_slots = asyncio.Semaphore(MAX_TLS_SESSIONS)
            async with self._tls_slots:
                await writer.start_tls(self.tls_context, ssl_handshake_timeout=self.idle_timeout)
                await writer.drain()
                await reader.read(READ_LIMIT)
            return
        if spec.service == "ssh":
            writer.write(SSH_BANNER)
        elif spec.service == "authd":
            writer.write(AUTHD_BANNER)
        elif spec.service == "iscsi":
            bhs = await reader.readexactly(ISCSI_BHS)
            if bhs[0] & 0x3F == ISCSI_LOGIN_REQUEST:
                # Target error / service unavailable: a stand-in is not an iSCSI target.
                writer.write(iscsi_login_response(bhs, 0x03, 0x01))
                await writer.drain()
            return
        await writer.drain()
        await reader.read(READ_LIMIT)
