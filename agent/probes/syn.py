"""SYN mode (CAP_NET_RAW): half-open SYN probes for a whole round at once.

One sender and one receiver for the round: every SYN goes out from one reserved source port,
replies are read from raw TCP and ICMP sockets (each with a BPF filter), so thousands of
ports cost one timeout. SYN-ACK means ``open`` (we reset it), RST ``refused``, ICMP
unreachable ``unreachable``/``prohibited`` with the router that said so, silence after every
attempt ``filtered``. Each port that is not open is also traced (:mod:`agent.probes.traceroute`:
paced, silent hops retried, so a router's ICMP rate limit does not hide it) on its own
destination port, over the same sockets: the last router that answered and its hop number,
how far the responder is, and whether a reset came from a firewall.

A port found open gets its protocol check at once, over a connection of its own, while the
scan goes on; like every check it must be done by the round's start + ``timeout_s``. Each
destination address also gets ONE real connection from us, to the first port found open
(closed at once; none where that port's protocol check connects anyway), so the
destination's listener logs the address it saw us from (NAT) even for plain-tcp ports. IPv6
checks are connect-probed after the scan.

Outgoing SYNs and traceroute probes are built, and the replies read, by hand
(:mod:`agent.probes.packets`: microseconds, not scapy's millisecond per packet, and no
32 MiB of scapy in the agent). Blocking socket work runs in a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import selectors
import socket
import time
from collections.abc import Callable, Sequence

from netcheck.agent.fdlimit import fd_capped_concurrency
from netcheck.agent.probes import bpf, connect, packets
from netcheck.agent.probes.base import Outcome, ProbeOptions, make_result
from netcheck.agent.probes.icmp import DEST_UNREACH, describe, state_for_icmp
from netcheck.agent.probes.rtt import RoundTrips, Window
from netcheck.agent.probes.service import SERVICE_CHECKS
from netcheck.agent.probes.traceroute import Key, Trace, Tracer, firewall_verdict, hops_from_ttl
from netcheck.agent.wire import CheckSpec, ProbeResult, ProbeState, ServiceCheck


@dataclasses.dataclass
class _Port:
    """What the SYN probes of one (address, port) found."""

    state: ProbeState | None = None
    latency_s: float | None = None
    responder: str | None = None
    ttl: int | None = None
    detail: str = ""
    attempts: int = 0


def _source_for(dst: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((dst, 9))
        return str(s.getsockname()[0])


class _Scanner:
    def __init__(
        self, roles: dict[Key, str], rtts: RoundTrips, on_open: Callable[[Key], None]
    ) -> None:
        self.roles = roles
        self.rtts = rtts
        self.on_open = on_open
        self.ports: dict[Key, _Port] = {k: _Port() for k in roles}
        self.sent_at: dict[Key, float] = {}
        self.base = random.randrange(1 << 30)
        self.tracer = Tracer(self.base + (1 << 30), self._send)
        self.src: dict[str, str] = {}
        # A bound, non-listening socket reserves our source port; the kernel resets
        # SYN-ACKs that reach it.
        self.reserve = socket.socket()
        self.reserve.bind(("0.0.0.0", 0))
        self.sport = int(self.reserve.getsockname()[1])
        self.out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.tcp_in = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        self.icmp_in = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        bpf.attach(self.tcp_in, bpf.tcp_to_port(self.sport))
        bpf.attach(self.icmp_in, bpf.icmp_errors())
        for s in (self.tcp_in, self.icmp_in):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        # epoll, not select(): descriptor numbers past 1,024 are normal in a busy agent
        # (its stand-in listeners may hold hundreds of connections when the scan starts).
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.tcp_in, selectors.EVENT_READ)
        self.selector.register(self.icmp_in, selectors.EVENT_READ)

    def close(self) -> None:
        self.selector.close()
        for s in (self.reserve, self.out, self.tcp_in, self.icmp_in):
            s.close()

    def _send(self, key: Key, flags: str, seq: int, ttl: int = 64) -> None:
        dst, port = key
        src = self.src.get(dst) or self.src.setdefault(dst, _source_for(dst))
        pkt = packets.tcp_segment(src, dst, self.sport, port, seq, flags, ttl)
        try:
            self.out.sendto(pkt, (dst, 0))
        except OSError as exc:
            found = self.ports[key]
            if found.state is None:
                found.state, found.detail = "error", f"cannot send: {exc}"

    def syn_round(self, keys: Sequence[Key]) -> None:
        for n, key in enumerate(keys):
            found = self.ports[key]
            if found.state is None:
                found.attempts += 1
                self.sent_at.setdefault(key, time.monotonic())
                self._send(key, "S", self.base)
            if n % 256 == 255:
                time.sleep(0.001)

    def _answered(self, key: Key, found: _Port) -> None:
        found.latency_s = time.monotonic() - self.sent_at.get(key, time.monotonic())
        self.rtts.add(key[0], self.roles[key], found.latency_s)

    def done(self) -> bool:
        """Every port answered, and every traced port's destination side answered too."""
        return all(p.state is not None and self.tracer.finished(k) for k, p in self.ports.items())

    def receive_until(self, deadline: float, version: int) -> None:
        """Read answers until `deadline`, everything answered, or a window moved."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.done() or self.rtts.version != version:
                return
            for ready, _ in self.selector.select(min(left, 0.05)):
                sock = self.tcp_in if ready.fileobj is self.tcp_in else self.icmp_in
                for _ in range(512):
                    try:
                        data = sock.recv(65535, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    if sock is self.tcp_in:
                        self._on_tcp(data)
                    else:
                        self._on_icmp(data)

    def _on_tcp(self, data: bytes) -> None:
        pkt = packets.read_tcp(data)
        if pkt is None or pkt.dport != self.sport:
            return
        key = (pkt.src, pkt.sport)
        found = self.ports.get(key)
        if found is None:
            return
        ack, flags = pkt.ack, pkt.flags
        if self.tracer.on_tcp(key, ack, pkt.ttl):
            return
        if ack != (self.base + 1) & 0xFFFFFFFF or found.state is not None:
            return
        self._answered(key, found)
        found.ttl = pkt.ttl
        found.responder = pkt.src
        if flags & 0x12 == 0x12:  # SYN-ACK
            found.state = "open"
            self.tracer.traces.pop(key, None)  # traced while silent: nothing to find now
            self._send(key, "R", ack)
            self.on_open(key)
        elif flags & 0x04:
            found.state = "refused"
            found.detail = f"TCP reset from {pkt.src} (TTL {pkt.ttl})"

    def _on_icmp(self, data: bytes) -> None:
        err = packets.read_icmp_error(data)
        if err is None or err.inner_sport != self.sport:
            return
        key = (err.inner_dst, err.inner_dport)
        found = self.ports.get(key)
        if found is None:
            return
        icmp_type, code, router = err.type, err.code, err.src
        seq = err.inner_seq
        if self.tracer.on_icmp(key, seq, icmp_type, router, err.ttl):
            return
        if icmp_type != DEST_UNREACH or seq != self.base or found.state is not None:
            return
        found.state = state_for_icmp(icmp_type, code)
        self._answered(key, found)
        found.responder = router
        found.ttl = err.ttl
        found.detail = f"{describe(icmp_type, code)} from {router}"


def scan(
    checks: Sequence[CheckSpec],
    opts: ProbeOptions,
    on_open: Callable[[Key], None] = lambda key: None,
) -> tuple[dict[Key, _Port], dict[Key, Trace]]:
    """Blocking: SYN-probe every (address, port), and traceroute the ones not open.

    Each port has a window (the timeout, or the adaptive one of :mod:`agent.probes.rtt`,
    re-read as answers arrive): attempt k goes out at ``k × window / attempts``, and a port
    still silent at the end of its window is ``filtered``. A port not open after its first
    step is traced while its remaining attempts run, so the scan stays within the windows.
    `on_open` is called (from this thread) with each port as it is found open.
    """
    roles = {(c.dst_address, c.port): c.dst_role for c in checks}
    scanner = _Scanner(roles, opts.round_trips(), on_open)
    try:
        start = time.monotonic()
        while True:
            now = time.monotonic()
            per_dest: dict[tuple[str, str], Window] = {}
            due: list[Key] = []
            trace: list[Key] = []
            end = start
            wake: float | None = None
            for key, found in scanner.ports.items():
                dest = (key[0], roles[key])
                win = per_dest.get(dest) or per_dest.setdefault(dest, scanner.rtts.window(*dest))
                step = win.seconds / opts.attempts
                end = max(end, start + win.seconds)
                if found.state is None and now >= start + win.seconds:
                    found.state = "filtered"
                    found.detail = win.describe(found.attempts, roles[key])
                elif found.state is None:
                    sent = found.attempts
                    if sent < opts.attempts and start + sent * step <= now:
                        due.append(key)
                        sent += 1
                    t = start + (sent * step if sent < opts.attempts else win.seconds)
                    wake = t if wake is None else min(wake, t)
                if not scanner.tracer.traced(key) and (
                    found.state not in (None, "open") or now >= start + step
                ):
                    trace.append(key)
            scanner.syn_round(due)
            scanner.tracer.start([k for k in trace if scanner.ports[k].state != "open"])
            traced = scanner.tracer.tick()
            if scanner.done() or now >= end:
                return scanner.ports, scanner.tracer.traces
            wake = min(t for t in (wake, traced, end) if t is not None)
            scanner.receive_until(wake, scanner.rtts.version)
    finally:
        scanner.close()


def _outcome(
    found: _Port, trace: Trace | None, open_ttl: int | None, service_check: ServiceCheck | None
) -> Outcome:
    from_firewall, note = None, ""
    if found.state == "refused" and found.ttl is not None:
        from_firewall, note = firewall_verdict(found.ttl, trace, open_ttl)
    responder = found.responder if found.state != "open" else None
    # A reset may carry the destination's address (a firewall forges it): its TTL tells how
    # far its sender really is. An ICMP error's sender is named: the trace's hop, if it was one.
    responder_hops = None
    if responder is not None and found.state != "refused" and trace is not None:
        responder_hops = trace.hops_to(responder)
    if responder is not None and responder_hops is None and found.ttl is not None:
        responder_hops = hops_from_ttl(found.ttl)
    return Outcome(
        state=found.state or "error",
        attempts=found.attempts,
        latency_s=found.latency_s,
        service_check=service_check,
        last_hop=trace.last_hop if trace is not None else None,
        last_hop_hops=trace.last_hop_hops if trace is not None else None,
        responder=responder,
        responder_hops=responder_hops,
        rst_from_firewall=from_firewall,
        error=found.detail + note,
    )


async def run(
    checks: Sequence[CheckSpec], opts: ProbeOptions, concurrency: int
) -> list[ProbeResult]:
    """Every check in SYN mode, results in input order; a port found open gets its protocol
    check over a connection as soon as it is found, within the check's deadline."""
    loop = asyncio.get_running_loop()
    started_at = time.time()
    deadline = loop.time() + opts.timeout_s
    sem = asyncio.Semaphore(fd_capped_concurrency(concurrency, opts.attempts))
    v4 = [c for c in checks if ":" not in c.dst_address]
    protocol: dict[Key, list[int]] = {}
    if opts.service_checks:
        for i, c in enumerate(checks):
            if ":" not in c.dst_address and SERVICE_CHECKS[c.service].checks_anything:
                protocol.setdefault((c.dst_address, c.port), []).append(i)
    service_checks: dict[int, asyncio.Task[ServiceCheck | None]] = {}
    # One real connection per destination address (see the module text).
    paired: dict[str, asyncio.Task[bool] | None] = {}
    scanning = True

    async def service_check(check: CheckSpec) -> ServiceCheck | None:
        async with sem:
            return (await connect.probe(check, opts, deadline=deadline)).service_check

    async def pair(key: Key) -> bool:
        async with sem:
            return await connect.touch(key[0], key[1], opts, deadline)

    def opened(key: Key) -> None:
        if not scanning:  # the round was cancelled while the scan's thread ran on
            return
        for i in protocol.get(key, ()):
            service_checks[i] = asyncio.create_task(service_check(checks[i]))
        if key[0] not in paired:
            paired[key[0]] = None if key in protocol else asyncio.create_task(pair(key))

    def on_open(key: Key) -> None:  # called from the scan's thread
        loop.call_soon_threadsafe(opened, key)

    try:
        ports, traces = await asyncio.to_thread(scan, v4, opts, on_open) if v4 else ({}, {})
        await asyncio.gather(*service_checks.values())
        await asyncio.gather(*(t for t in paired.values() if t is not None))
    finally:
        scanning = False
        for task in [*service_checks.values(), *(t for t in paired.values() if t is not None)]:
            task.cancel()
    open_ttl = {k[0]: p.ttl for k, p in ports.items() if p.state == "open" and p.ttl is not None}
    v6_round = opts.round_trips()

    async def one(i: int, check: CheckSpec) -> ProbeResult:
        key = (check.dst_address, check.port)
        if key not in ports:  # IPv6: connect probe
            async with sem:
                return await connect.probe(check, opts, v6_round)
        task = service_checks.get(i)
        found = _outcome(
            ports[key], traces.get(key), open_ttl.get(key[0]), task.result() if task else None
        )
        return make_result(check, opts, "syn", started_at, found)

    return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(checks))))
