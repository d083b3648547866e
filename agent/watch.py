"""Receiver-side evidence: the SYNs that reach this host for its planned inbound ports.

With CAP_NET_RAW, :class:`SynWatcher` opens one AF_PACKET socket (SOCK_DGRAM, ETH_P_IP: the
packet from its IP header, on every interface) with a classic BPF filter
(:func:`~netcheck.agent.probes.bpf.syns_to_ports`: incoming TCP SYN without ACK to one of the
ports), so the kernel hands over only those, cut to their headers. Packet taps run before
netfilter's input hooks: a SYN the host's own firewall drops is still seen here, one a router
drops never is, and one passing through (this host routes) is not this host's. Each SYN to
one of this host's addresses is reported to `on_syn` (port, source address, TTL it arrived
with): the listeners' peer log (:meth:`~netcheck.agent.listeners.ListenerSet.saw_syn`), one
record per (port, source) between two reports, so memory stays bounded by that log's cap.

Read on the event loop (``loop.add_reader``, a bounded burst per wake-up); headers read with
:func:`~netcheck.agent.probes.packets.read_tcp`. Without CAP_NET_RAW (or where AF_PACKET is
refused, e.g. a systemd unit's RestrictAddressFamilies) it does nothing and says so once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable

from netcheck.agent.caps import can_use_raw_sockets
from netcheck.agent.probes import bpf, packets

log = logging.getLogger(__name__)

ETH_P_IP = 0x0800
# Packets read per wake-up: a SYN flood leaves the loop to everything else between bursts.
READ_BURST = 256
# The socket's receive buffer: a burst beyond it is dropped by the kernel (the peer log
# needs one SYN per source and port, not all of them).
RCVBUF = 256 << 10
# Destination addresses whose locality is remembered at once.
MAX_ADDRESSES = 256
# (port, source address, TTL) of one SYN seen.
OnSyn = Callable[[int, str, int], None]


class SynWatcher:
    """Watch this host's interfaces for SYNs to a set of ports (see the module text)."""

    def __init__(self, on_syn: OnSyn) -> None:
        self.on_syn = on_syn
        self.sock: socket.socket | None = None
        self.ports: frozenset[int] = frozenset()
        self.seen = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._said = False
        # Destination address -> whether it is this host's (see _local).
        self._locals: dict[bytes, bool] = {}

    @property
    def active(self) -> bool:
        return self.sock is not None

    def watch(self, ports: Iterable[int]) -> None:
        """Watch `ports` from now on (none: stop reading); opens the socket on first use."""
        wanted = frozenset(p for p in ports if 1 <= p <= 65535)
        if wanted == self.ports and (self.sock is not None or not wanted):
            return
        self.ports = wanted
        if not wanted:
            self.close()
            return
        if self.sock is None and not self._open():
            return
        assert self.sock is not None
        if len(wanted) > bpf.MAX_SYN_PORTS:
            log.warning(
                "SYN watcher: %d ports, watching the lowest %d", len(wanted), bpf.MAX_SYN_PORTS
            )
            wanted = frozenset(sorted(wanted)[: bpf.MAX_SYN_PORTS])
        bpf.attach(self.sock, bpf.syns_to_ports(wanted))

    def _open(self) -> bool:
        if not can_use_raw_sockets():
            self._say("no CAP_NET_RAW: not watching for SYNs (peers are the accepted ones)")
            return False
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        except OSError as exc:
            self._say(f"cannot open a packet socket ({exc}): not watching for SYNs")
            return False
        try:
            # Nothing until the filter is on: a filter that accepts nothing first.
            bpf.attach(sock, [(0x06, 0, 0, 0)])
            _drain(sock)  # what arrived before the filter
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setblocking(False)
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(sock.fileno(), self._read)
        except OSError as exc:
            sock.close()
            self._say(f"cannot filter a packet socket ({exc}): not watching for SYNs")
            return False
        self.sock = sock
        log.info("SYN watcher: seeing the SYNs that reach this host's planned ports")
        return True

    def _say(self, text: str) -> None:
        if not self._said:
            self._said = True
            log.info("%s", text)

    def _read(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(READ_BURST):
            try:
                data, addr = sock.recvfrom(256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("SYN watcher: %s", exc)
                return
            if addr[2] != bpf.PACKET_HOST:
                continue
            pkt = packets.read_tcp(data)
            if pkt is None or pkt.dport not in self.ports or pkt.flags & 0x12 != 0x02:
                continue
            if not self._local(data[16:20]):  # passing through (this host routes): not ours
                continue
            self.seen += 1
            self.on_syn(pkt.dport, pkt.src, pkt.ttl)

    def _local(self, dst: bytes) -> bool:
        """Whether the IPv4 address `dst` is one of this host's (it can be bound), cached."""
        known = self._locals.get(dst)
        if known is None:
            if len(self._locals) >= MAX_ADDRESSES:
                self._locals.clear()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((socket.inet_ntoa(dst), 0))
                    known = True
                except OSError:
                    known = False
            self._locals[dst] = known
        return known

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        sock.close()


def _drain(sock: socket.socket) -> None:
    while True:
        try:
            sock.recv(256, socket.MSG_DONTWAIT)
        except OSError:
            return
