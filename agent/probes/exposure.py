"""Exposure sweep: every TCP port of each peer this agent already probes, to find what is open.

Targets come ONLY from the agent's own plan (its checks' destination hosts and addresses,
which the controller took from the inventory): a request names ports and pace, never an
address. With CAP_NET_RAW the sweep is half-open: SYNs built by hand
(:mod:`agent.probes.packets`) go out from one reserved source port at most ``rate`` a
second, replies are read from a raw TCP socket behind a BPF filter for that port
(:mod:`agent.probes.bpf`); a SYN-ACK is ``open`` (the kernel resets it: the reserved port
does not listen), a RST ``closed``, silence after every attempt ``silent``. ``retries``
further SYNs go to the ports still silent once a pass is sent, then the sweep waits
``timeout`` after the last one and stops. Without the capability it connects instead, at
most ``concurrency`` at once and ``rate`` a second, each for ``timeout``.

An open port that is not one of the plan's own ports to that host gets its banner: one
connection, and what the service says first (at most :data:`~agent.wire.MAX_BANNER`
bytes, for at most ``banner_s``), while the sweep goes on. The whole sweep ends by the
request's deadline, whatever is left (the host is then marked incomplete).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import random
import selectors
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

from netcheck.agent.probes import bpf, packets
from netcheck.agent.wire import (
    MAX_BANNER,
    MAX_OPEN_PORTS,
    OpenPort,
    Plan,
    ProbeMode,
    SweptHost,
)

# At most this many banner reads at once, and this long each (at most the sweep's timeout).
BANNER_CONCURRENCY = 256
BANNER_S = 1.0


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """How to sweep (the request's parameters)."""

    first_port: int = 1
    last_port: int = 65535
    rate: float = 20_000.0
    concurrency: int = 4096
    timeout_s: float = 1.0
    retries: int = 1
    banner_s: float = BANNER_S
    bind_address: str = ""

    @property
    def ports(self) -> range:
        return range(self.first_port, self.last_port + 1)


@dataclasses.dataclass(frozen=True)
class Target:
    host: str
    address: str
    # The plan's own ports to this host (documented for this pair: no banner read).
    planned: frozenset[int]


def targets_of(plan: Plan) -> list[Target]:
    """The plan's destinations: one per (host, address), with the plan's ports to it."""
    planned: dict[tuple[str, str], set[int]] = {}
    for c in plan.checks:
        planned.setdefault((c.dst_host, c.dst_address), set()).add(c.port)
    return [Target(h, a, frozenset(p)) for (h, a), p in sorted(planned.items())]


@dataclasses.dataclass
class Swept:
    """What a sweep found per target: open ports (in order found) and how the sweep went."""

    open: dict[Target, list[int]]
    refused: dict[Target, int]
    seconds: float
    complete: bool
    mode: ProbeMode


class SynTemplate:
    """SYNs from one source to one destination, any port: one segment built by
    :func:`~agent.probes.packets.tcp_segment`, then only its destination port and TCP
    checksum patched (the checksum is a ones'-complement sum: a port adds its value to the
    sum of the segment with port 0). A microsecond a packet, not several."""

    def __init__(self, src: str, dst: str, sport: int, seq: int) -> None:
        self.packet = bytearray(packets.tcp_segment(src, dst, sport, 0, seq, "S"))
        # The checksum field holds ~fold(sum with port 0): its complement is that sum.
        self._sum0 = ~struct.unpack_from("!H", self.packet, 36)[0] & 0xFFFF

    def at(self, port: int) -> bytearray:
        """The SYN to `port` (the same buffer, rewritten: send it before the next call)."""
        total = self._sum0 + port
        total = (total & 0xFFFF) + (total >> 16)
        struct.pack_into("!H", self.packet, 22, port)
        struct.pack_into("!H", self.packet, 36, ~total & 0xFFFF)
        return self.packet


def _source_for(dst: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((dst, 9))
        return str(s.getsockname()[0])


class _Pacer:
    """At most `rate` sends a second, in bursts of up to 1 ms worth."""

    def __init__(self, rate: float) -> None:
        self.rate = max(1.0, rate)
        self.start = time.monotonic()
        self.sent = 0

    def allowed(self) -> int:
        """How many may go now (0: wait :meth:`wait_s`)."""
        due = int((time.monotonic() - self.start) * self.rate) + 1
        return max(0, due - self.sent)

    def wait_s(self) -> float:
        return max(0.0, self.start + (self.sent + 1) / self.rate - time.monotonic())

    async def turn(self) -> None:
        """Wait for the next send's slot, and take it."""
        if not self.allowed():  # no turn of the event loop when the pace allows it now
            await asyncio.sleep(self.wait_s())
        self.sent += 1


def syn_sweep(
    targets: Sequence[Target],
    opts: SweepOptions,
    stop_at: float,
    on_open: Callable[[Target, int], None] = lambda t, p: None,
) -> Swept:
    """Blocking (run it in a thread; CAP_NET_RAW): half-open SYNs to every port of every
    IPv4 target, by `stop_at` (monotonic) at the latest."""
    t0 = time.monotonic()
    v4 = [t for t in targets if ":" not in t.address]
    by_addr = {t.address: t for t in v4}
    ports = opts.ports
    base = ports.start
    n = len(ports)
    # One byte per (target, port): 0 silent, 1 open, 2 refused.
    found = {t.address: bytearray(n) for t in v4}
    opened: dict[Target, list[int]] = {t: [] for t in v4}
    reserve = socket.socket()
    out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    tcp_in = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    sel = selectors.DefaultSelector()
    try:
        reserve.bind((opts.bind_address or "0.0.0.0", 0))
        sport = int(reserve.getsockname()[1])
        bpf.attach(tcp_in, bpf.tcp_to_port(sport))
        tcp_in.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sel.register(tcp_in, selectors.EVENT_READ)
        seq = random.randrange(1 << 32)
        ack = (seq + 1) & 0xFFFFFFFF
        syns = {
            t.address: SynTemplate(
                opts.bind_address or _source_for(t.address), t.address, sport, seq
            )
            for t in v4
        }

        def drain() -> None:
            for _ in range(4096):
                try:
                    data = tcp_in.recv(128, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return
                pkt = packets.read_tcp(data)
                if pkt is None or pkt.dport != sport or pkt.ack != ack:
                    continue
                seen = found.get(pkt.src)
                i = pkt.sport - base
                if seen is None or not 0 <= i < n or seen[i]:
                    continue
                if pkt.flags & 0x12 == 0x12:
                    seen[i] = 1
                    t = by_addr[pkt.src]
                    if len(opened[t]) < MAX_OPEN_PORTS:
                        opened[t].append(pkt.sport)
                        on_open(t, pkt.sport)
                elif pkt.flags & 0x04:
                    seen[i] = 2

        def wait(until: float) -> None:
            left = until - time.monotonic()
            if left > 0:
                sel.select(min(left, 0.05))
            drain()

        pacer = _Pacer(opts.rate)
        complete = True
        # Interleave the targets: one port of each in turn (no host sees a burst). A position
        # in (port x target) order, not a list of them: 65,535 ports of ten hosts as tuples
        # would be tens of megabytes.
        addrs = [t.address for t in v4]
        total = n * len(addrs)
        for _attempt in range(opts.retries + 1):
            if not any(0 in f for f in found.values()):
                break
            pos = 0
            while pos < total:
                if time.monotonic() >= stop_at:
                    complete = False
                    break
                allowed = pacer.allowed()
                if not allowed:
                    wait(time.monotonic() + pacer.wait_s())
                    continue
                budget = min(allowed, 512)
                while budget and pos < total:
                    i, j = divmod(pos, len(addrs))
                    addr = addrs[j]
                    if found[addr][i]:  # answered already: no retry
                        pos += 1
                        continue
                    try:
                        out.sendto(syns[addr].at(base + i), (addr, 0))
                    except OSError as exc:
                        if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                            raise
                        wait(time.monotonic() + 0.001)
                        break
                    pos += 1
                    budget -= 1
                    pacer.sent += 1
                drain()
            if not complete:
                break
        # The last SYN's answers: one timeout, cut short once nothing is silent.
        natural = time.monotonic() + opts.timeout_s
        end = min(stop_at, natural)
        while time.monotonic() < end and any(0 in f for f in found.values()):
            wait(end)
        if stop_at < natural and any(0 in f for f in found.values()):
            complete = False
    finally:
        sel.close()
        for s in (reserve, out, tcp_in):
            s.close()
    refused = {t: found[t.address].count(2) for t in v4}
    return Swept(opened, refused, time.monotonic() - t0, complete, "syn")


async def _worker(
    items: Iterator[tuple[Target, int]],
    one: Callable[[Target, int], Awaitable[bool]],
    pacer: _Pacer,
    stop_at: float,
) -> None:
    """One of connect_sweep's workers: the next (target, port) of `items`, paced, until none
    is left or `stop_at`."""
    for t, p in items:
        if time.monotonic() >= stop_at:
            return
        await pacer.turn()
        await one(t, p)


async def connect_sweep(
    targets: Sequence[Target],
    opts: SweepOptions,
    stop_at: float,
    on_open: Callable[[Target, int], None] = lambda t, p: None,
) -> Swept:
    """Every port of every target by connect(), at most `opts.concurrency` at once and
    `opts.rate` a second, each waited `opts.timeout_s` (retries: again for the silent
    ones), all by `stop_at` (monotonic)."""
    from netcheck.agent.fdlimit import fd_capped_concurrency

    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    opened: dict[Target, list[int]] = {t: [] for t in targets}
    refused: dict[Target, int] = dict.fromkeys(targets, 0)
    workers = max(1, fd_capped_concurrency(opts.concurrency, 1))
    pacer = _Pacer(opts.rate)
    complete = True

    async def one(t: Target, port: int) -> bool:
        """True when the port answered (open or refused)."""
        family = socket.AF_INET6 if ":" in t.address else socket.AF_INET
        left = min(opts.timeout_s, stop_at - time.monotonic())
        if left <= 0:
            return False
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            try:
                if opts.bind_address:
                    sock.bind((opts.bind_address, 0))
                async with asyncio.timeout(left):  # no task per connect (wait_for makes one)
                    await loop.sock_connect(sock, (t.address, port))
            except ConnectionRefusedError:
                refused[t] += 1
                return True
            except (OSError, TimeoutError):
                return False
        if len(opened[t]) < MAX_OPEN_PORTS:
            opened[t].append(port)
            on_open(t, port)
        return True

    # A fixed pool of workers over one lazy sequence of (target, port), the answered ones
    # skipped (not a task per port, nor a list: 65,535 of either would cost the agent far
    # more memory than its budget).
    base = opts.ports.start
    answered = {t: bytearray(len(opts.ports)) for t in targets}

    def pending() -> Iterator[tuple[Target, int]]:
        for p in opts.ports:
            for t in targets:
                if not answered[t][p - base]:
                    yield t, p

    async def mark(t: Target, p: int) -> bool:
        got = await one(t, p)
        if got:
            answered[t][p - base] = 1
        return got

    for _attempt in range(opts.retries + 1):
        if all(0 not in a for a in answered.values()):
            break
        items = pending()
        await asyncio.gather(*(_worker(items, mark, pacer, stop_at) for _ in range(workers)))
        complete = complete and time.monotonic() < stop_at
        if not complete:
            break
    return Swept(opened, refused, time.monotonic() - t0, complete, "connect")


async def banner(address: str, port: int, wait_s: float, bind_address: str = "") -> str:
    """What the service on `address`:`port` says first: at most MAX_BANNER bytes within
    `wait_s` (printable text; other bytes as \\xNN), "" when it says nothing."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    chunks = b""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(wait_s):
                if bind_address:
                    sock.bind((bind_address, 0))
                await loop.sock_connect(sock, (address, port))
                while len(chunks) < MAX_BANNER:
                    data = await loop.sock_recv(sock, MAX_BANNER - len(chunks))
                    if not data:
                        break
                    chunks += data
                    if b"\n" in chunks:
                        break
    return printable(chunks[:MAX_BANNER])[:MAX_BANNER]


def printable(data: bytes) -> str:
    text = data.strip().decode("ascii", "backslashreplace")
    return "".join(c if c.isprintable() or c in "\t" else f"\\x{ord(c):02x}" for c in text).strip()


async def sweep(
    plan: Plan, opts: SweepOptions, mode: ProbeMode, deadline_s: float
) -> tuple[list[SweptHost], list[OpenPort]]:
    """Sweep every target of `plan` in `mode` (``syn`` needs CAP_NET_RAW; IPv6 targets are
    connected), within `deadline_s` seconds from now; the hosts swept and the open ports,
    with the banners of those that are not the plan's own."""
    loop = asyncio.get_running_loop()
    stop_at = time.monotonic() + max(0.0, deadline_s)
    targets = targets_of(plan)
    banners: dict[tuple[Target, int], asyncio.Task[str]] = {}
    sem = asyncio.Semaphore(BANNER_CONCURRENCY)
    wait_s = min(opts.banner_s, opts.timeout_s)

    async def read(t: Target, port: int) -> str:
        async with sem:
            left = min(wait_s, stop_at - time.monotonic())
            return await banner(t.address, port, max(0.0, left), opts.bind_address)

    def opened(t: Target, port: int) -> None:
        if port not in t.planned and (t, port) not in banners:
            banners[(t, port)] = asyncio.create_task(read(t, port))

    def from_thread(t: Target, port: int) -> None:
        loop.call_soon_threadsafe(opened, t, port)

    results: list[Swept] = []
    v6 = [t for t in targets if ":" in t.address]
    try:
        if mode == "syn":
            v4 = [t for t in targets if ":" not in t.address]
            if v4:
                results.append(await asyncio.to_thread(syn_sweep, v4, opts, stop_at, from_thread))
            if v6:
                results.append(await connect_sweep(v6, opts, stop_at, opened))
        elif targets:
            results.append(await connect_sweep(targets, opts, stop_at, opened))
        await asyncio.sleep(0)  # the last call_soon_threadsafe callbacks
        await asyncio.gather(*banners.values(), return_exceptions=True)
    finally:
        for task in banners.values():
            task.cancel()
    swept: list[SweptHost] = []
    ports: list[OpenPort] = []
    n = len(opts.ports)
    for r in results:
        for t, found in r.open.items():
            silent = n - len(found) - r.refused.get(t, 0)
            swept.append(
                SweptHost(t.host, t.address, n, r.mode, r.seconds, max(0, silent), r.complete)
            )
            for port in sorted(found):
                got = banners.get((t, port))
                text = ""
                if got is not None and got.done() and not got.cancelled():
                    text = got.result() if got.exception() is None else ""
                ports.append(OpenPort(t.host, t.address, port, text))
    return swept, ports[:MAX_OPEN_PORTS]
