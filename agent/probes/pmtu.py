"""Path MTU of a data path, on the data port itself, with TCP segments marked DF.

UDP and ICMP echo are not what the firewall lets through on HDM's data ports, so the probe
is TCP to the peer's stand-in (its SINK session, :mod:`agent.measure`), on the very port:

1. One connection with ``IP_MTU_DISCOVER = IP_PMTUDISC_DO`` (DF on every segment): the
   route's MTU (``IP_MTU``), then a bounded burst of full-size segments. When every byte is
   acknowledged (``SIOCOUTQ`` = 0) and ``IP_MTU`` did not move, the path carries full-size
   packets. When ``IP_MTU`` dropped, a router sent ICMP fragmentation-needed and the kernel
   learnt the path MTU from it: that value is the answer (``icmp`` True), checked by step 2's
   probe of exactly that size.
2. When the burst is not acknowledged in time (large segments silently dropped), a binary
   search over fresh connections whose segments are cut to a chosen packet size with
   ``TCP_MAXSEG`` (before connect, so the packets are exactly that size, timestamps and all):
   a size passes when its bytes are acknowledged at that size (the kernel neither learnt a
   smaller MTU nor shrank the segment). The largest size that passes is the path MTU; when
   it is below the route's MTU and no ICMP came back, the path is a black hole (``black_hole``
   True: the classic MSS/PMTUD failure). When even the smallest size fails, the path is
   broken for data, not a black hole.

IPv4 only (HDM does not support IPv6). Blocking sockets in a thread, every wait bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import socket
import struct
import time

from netcheck.agent import measure

# Linux constants the socket module does not export.
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
IP_MTU = 14
SIOCOUTQ = 0x5411  # TIOCOUTQ: bytes not yet acknowledged by the peer
SIOCGIFMTU = 0x8921
TCPI_OPT_TIMESTAMPS = 1
IPV4_TCP_HEADERS = 40
TIMESTAMP_OPTION = 12
# The smallest packet every IPv4 path must carry (RFC 791).
MIN_MTU = 576
# Full-size segments sent per try (enough that one lost or coalesced still leaves several).
SEGMENTS = 8
POLL_S = 0.005


@dataclasses.dataclass(frozen=True)
class PmtuResult:
    """What the probe found on one path (address, port)."""

    address: str
    port: int
    # The largest IP packet that passed with DF set (bytes), None when none did.
    mtu: int | None
    # The MTU of the interface towards the path (else the route's as seen before sending).
    route_mtu: int | None = None
    # True: ICMP fragmentation-needed came back (now, or earlier: the route had learnt a
    # smaller MTU than its interface's); False: large segments vanished silently; None:
    # nothing larger than the path carries was sent (the path carries the route MTU).
    icmp: bool | None = None
    black_hole: bool = False
    probes: int = 0
    elapsed_s: float = 0.0
    error: str = ""


@dataclasses.dataclass(frozen=True)
class _Try:
    outcome: str  # "pass" | "icmp" | "silent" | "shrunk" | "error"
    packet: int = 0  # the packet size the segments really had
    mtu_after: int = 0
    error: str = ""


def _packet_size(sock: socket.socket) -> int:
    """The IP packet size of a full segment on `sock` now (tcp_info: snd_mss, options)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    options = info[5]
    (snd_mss,) = struct.unpack_from("I", info, 16)
    ts = TIMESTAMP_OPTION if options & TCPI_OPT_TIMESTAMPS else 0
    return int(snd_mss) + IPV4_TCP_HEADERS + ts


def _unacked(sock: socket.socket) -> int:
    buf = fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


def _route_mtu(sock: socket.socket) -> int:
    return int(sock.getsockopt(socket.IPPROTO_IP, IP_MTU))


def iface_mtu(address: str) -> int | None:
    """The MTU of the interface the main routing table sends `address` out of (the longest
    prefix of /proc/net/route), or None when it cannot be told."""
    if address.startswith("127."):
        return None  # the local table's loopback, not in /proc/net/route
    try:
        want = struct.unpack("<I", socket.inet_aton(address))[0]
        # this thread's namespace (a thread may have moved: setns), else the process's
        table = "/proc/thread-self/net/route"
        with open(table if os.path.exists(table) else "/proc/net/route") as f:
            rows = [line.split() for line in f.readlines()[1:1025]]
        best: tuple[int, str] | None = None
        for row in rows:
            if len(row) < 8:
                continue
            dst, mask = int(row[1], 16), int(row[7], 16)
            if want & mask == dst and (best is None or mask.bit_count() > best[0]):
                best = (mask.bit_count(), row[0])
        if best is None or len(best[1]) >= 16:
            return None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            ifreq = struct.pack("16si", best[1].encode(), 0)
            got = fcntl.ioctl(s.fileno(), SIOCGIFMTU, ifreq)
        return int(struct.unpack("16si", got)[1])
    except (OSError, ValueError, struct.error):
        return None


def _try(
    address: str, port: int, size: int | None, timeout_s: float, bind: str = ""
) -> tuple[_Try, int]:
    """One connection: segments of `size` bytes (None: as large as the route allows) sent
    with DF to the stand-in's sink; how they fared, and the route MTU seen at connect."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if size is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, size - IPV4_TCP_HEADERS)
        if bind:
            sock.bind((bind, 0))
        sock.settimeout(timeout_s)
        try:
            sock.connect((address, port))
        except OSError as exc:
            return _Try("error", error=f"connect: {exc}"), 0
        route = _route_mtu(sock)
        want = _packet_size(sock)
        if size is not None and want < size:
            # The route (a learnt MTU) or the peer's MSS already rule this size out.
            return _Try("icmp" if route < size else "shrunk", want, route), route
        sock.sendall(measure.request_line("sink"))
        payload = bytes(SEGMENTS * (want - IPV4_TCP_HEADERS))
        sock.settimeout(timeout_s)
        try:
            sock.sendall(payload)
        except OSError as exc:
            return _Try("error", want, error=f"send: {exc}"), route
        deadline = time.monotonic() + timeout_s
        while _unacked(sock) > 0 and time.monotonic() < deadline:
            time.sleep(POLL_S)
        after = _route_mtu(sock)
        now = _packet_size(sock)
        if after < route or (size is not None and after < size):
            return _Try("icmp", now, after), route
        if _unacked(sock) > 0:
            return _Try("silent", want, after), route
        if now < want:
            return _Try("shrunk", now, after), route  # the kernel's own MTU probing
        return _Try("pass", want, after), route
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def discover(
    address: str,
    port: int,
    timeout_s: float = 1.0,
    deadline_s: float = 30.0,
    bind: str = "",
    min_mtu: int = MIN_MTU,
) -> PmtuResult:
    """The path MTU to the stand-in at (address, port). Blocking; bounded by `deadline_s`."""
    t0 = time.monotonic()
    end = t0 + deadline_s
    probes = 1
    first, route = _try(address, port, None, timeout_s, bind)

    def done(**kw: object) -> PmtuResult:
        return PmtuResult(
            address=address,
            port=port,
            route_mtu=route or None,
            probes=probes,
            elapsed_s=time.monotonic() - t0,
            **kw,  # type: ignore[arg-type]
        )

    if first.outcome == "error":
        return done(mtu=None, error=first.error)
    link = iface_mtu(address)
    if first.outcome == "pass":
        # a route MTU below the interface's was learnt from an earlier ICMP
        # fragmentation-needed (this host's PMTU cache): ICMP does come back
        learnt = link is not None and route < min(link, 65535)
        if learnt and link is not None:
            route = link
        return done(mtu=first.packet, icmp=True if learnt else None)
    icmp = first.outcome == "icmp"
    hi = first.mtu_after if icmp else first.packet  # the smallest size known not to pass as is
    if icmp:
        probes += 1
        check, _ = _try(address, port, hi, timeout_s, bind)
        if check.outcome == "pass":
            return done(mtu=hi, icmp=True)
        hi = check.packet if check.outcome == "icmp" and check.packet < hi else hi
    lo = 0  # the largest size known to pass (0: none yet)
    if time.monotonic() < end:
        probes += 1
        small, _ = _try(address, port, min_mtu, timeout_s, bind)
        if small.outcome != "pass":
            why = small.error or f"segments of {min_mtu} bytes: {small.outcome}"
            return done(mtu=None, icmp=icmp or None, error=f"small packets fail too ({why})")
        lo = min_mtu
    while lo and hi - lo > 1 and time.monotonic() < end:
        mid = (lo + hi) // 2
        probes += 1
        got, _ = _try(address, port, mid, timeout_s, bind)
        if got.outcome == "pass":
            lo = mid
        elif got.outcome == "error":
            return done(mtu=lo, icmp=icmp or None, error=got.error)
        else:
            icmp = icmp or got.outcome == "icmp"
            hi = mid
    if hi - lo > 1:
        return done(mtu=lo or None, icmp=icmp, error=f"deadline: between {lo} and {hi} bytes")
    return done(mtu=lo, icmp=icmp, black_hole=not icmp)


async def probe(
    address: str,
    port: int,
    timeout_s: float = 1.0,
    deadline_s: float = 30.0,
    bind: str = "",
) -> PmtuResult:
    """:func:`discover` in a thread."""
    return await asyncio.to_thread(discover, address, port, timeout_s, deadline_s, bind)
