"""Raw mode (CAP_NET_RAW): half-open SYN probes and TCP traceroute for a whole plan at once.

One sender and one receiver for the plan: every SYN goes out from one reserved source port,
replies are read from raw TCP and ICMP sockets (each with a BPF filter), so thousands of
ports cost one timeout. SYN-ACK means ``open`` (we reset it), RST ``refused``, ICMP
unreachable ``unreachable``/``prohibited`` with the router that said so, silence after every
attempt ``filtered``. For each port that is not open, a TCP traceroute on that destination
port names the last router that answered, and a reset whose TTL shows fewer hops than the
destination is away is reported as coming from a firewall.

Outgoing SYNs and traceroute probes are built by hand (:mod:`agent.probes.packets`:
microseconds, not scapy's millisecond per packet); scapy dissects the replies. It is
imported here only, and only when raw mode runs. Blocking socket work runs in a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import select
import socket
import time
from collections.abc import Sequence

from netcheck.agent.fdlimit import fd_capped_concurrency
from netcheck.agent.probes import ProbeOptions, bpf, connect, make_result, packets
from netcheck.agent.probes.icmp import DEST_UNREACH, TIME_EXCEEDED, describe, state_for_icmp
from netcheck.agent.probes.rtt import RoundTrips, Window
from netcheck.agent.wire import CheckSpec, ProbeResult, ProbeState

MAX_HOPS = 16
Key = tuple[str, int]


@dataclasses.dataclass
class _Seen:
    state: ProbeState | None = None
    latency_s: float | None = None
    responder: str | None = None
    ttl: int | None = None
    detail: str = ""
    attempts: int = 0
    # Traceroute: router per TTL, and the smallest TTL the destination side answered at.
    hops: dict[int, str] = dataclasses.field(default_factory=dict)
    answered_at_ttl: int | None = None
    answer_ttl: int | None = None

    def answered(self, probe_ttl: int, reply_ttl: int) -> None:
        """The destination side answered a traceroute SYN sent with `probe_ttl`."""
        if self.answered_at_ttl is None or probe_ttl < self.answered_at_ttl:
            self.answered_at_ttl, self.answer_ttl = probe_ttl, reply_ttl


def _initial_ttl(ttl: int) -> int:
    return next(t for t in (32, 64, 128, 255) if ttl <= t)


def _source_for(dst: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((dst, 9))
        return str(s.getsockname()[0])


class _Scanner:
    def __init__(self, roles: dict[Key, str], rtts: RoundTrips) -> None:
        from scapy.layers.inet import IP, TCP

        self.IP, self.TCP = IP, TCP
        self.keys = list(roles)
        self.roles = roles
        self.rtts = rtts
        self.seen: dict[Key, _Seen] = {k: _Seen() for k in self.keys}
        self.sent_at: dict[Key, float] = {}
        self.base = random.randrange(1 << 30)
        self.tr_base = (self.base + (1 << 30)) & 0xFFFFFFFF
        self.src: dict[str, str] = {}
        self.traced: set[Key] = set()
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

    def close(self) -> None:
        for s in (self.reserve, self.out, self.tcp_in, self.icmp_in):
            s.close()

    def _send(self, key: Key, flags: str, seq: int, ttl: int = 64) -> None:
        dst, port = key
        src = self.src.get(dst) or self.src.setdefault(dst, _source_for(dst))
        pkt = packets.tcp_segment(src, dst, self.sport, port, seq, flags, ttl)
        try:
            self.out.sendto(pkt, (dst, 0))
        except OSError as exc:
            seen = self.seen[key]
            if seen.state is None:
                seen.state, seen.detail = "error", f"cannot send: {exc}"

    def syn_round(self, keys: Sequence[Key]) -> None:
        for n, key in enumerate(keys):
            seen = self.seen[key]
            if seen.state is None:
                seen.attempts += 1
                self.sent_at.setdefault(key, time.monotonic())
                self._send(key, "S", self.base)
            if n % 256 == 255:
                time.sleep(0.001)

    def _answered(self, key: Key, seen: _Seen) -> None:
        seen.latency_s = time.monotonic() - self.sent_at.get(key, time.monotonic())
        self.rtts.add(key[0], self.roles[key], seen.latency_s)

    def traceroute_round(self, keys: Sequence[Key]) -> None:
        self.traced.update(keys)
        for n, key in enumerate(keys):
            for ttl in range(1, MAX_HOPS + 1):
                self._send(key, "S", (self.tr_base + ttl) & 0xFFFFFFFF, ttl=ttl)
            if n % 16 == 15:
                time.sleep(0.001)

    def done(self) -> bool:
        """Every port answered, and every traced port's destination side answered too."""
        return all(
            s.state is not None and (k not in self.traced or s.answered_at_ttl is not None)
            for k, s in self.seen.items()
        )

    def receive_until(self, deadline: float, version: int) -> None:
        """Read answers until `deadline`, everything answered, or a window moved."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.done() or self.rtts.version != version:
                return
            ready, _, _ = select.select([self.tcp_in, self.icmp_in], [], [], min(left, 0.05))
            for sock in ready:
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
        pkt = self.IP(data)
        tcp = pkt.getlayer(self.TCP)
        if tcp is None or tcp.dport != self.sport:
            return
        key = (str(pkt.src), int(tcp.sport))
        seen = self.seen.get(key)
        if seen is None:
            return
        ack = int(tcp.ack)
        flags = int(tcp.flags)
        ttl = (ack - 1 - self.tr_base) & 0xFFFFFFFF
        if 1 <= ttl <= MAX_HOPS:
            seen.answered(ttl, int(pkt.ttl))
            return
        if ack != (self.base + 1) & 0xFFFFFFFF or seen.state is not None:
            return
        self._answered(key, seen)
        seen.ttl = int(pkt.ttl)
        seen.responder = str(pkt.src)
        if flags & 0x12 == 0x12:  # SYN-ACK
            seen.state = "open"
            self._send(key, "R", ack)
        elif flags & 0x04:
            seen.state = "refused"
            seen.detail = f"TCP reset from {pkt.src} (TTL {pkt.ttl})"

    def _on_icmp(self, data: bytes) -> None:
        from scapy.layers.inet import ICMP, IPerror, TCPerror

        pkt = self.IP(data)
        icmp = pkt.getlayer(ICMP)
        inner = pkt.getlayer(IPerror)
        inner_tcp = pkt.getlayer(TCPerror)
        if icmp is None or inner is None or inner_tcp is None or inner_tcp.sport != self.sport:
            return
        key = (str(inner.dst), int(inner_tcp.dport))
        seen = self.seen.get(key)
        if seen is None:
            return
        icmp_type, code, router = int(icmp.type), int(icmp.code), str(pkt.src)
        seq = int(inner_tcp.seq)
        ttl = (seq - self.tr_base) & 0xFFFFFFFF
        if 1 <= ttl <= MAX_HOPS:
            if icmp_type == TIME_EXCEEDED:
                seen.hops[ttl] = router
            else:
                seen.answered(ttl, int(pkt.ttl))
            return
        if icmp_type != DEST_UNREACH or seq != self.base or seen.state is not None:
            return
        seen.state = state_for_icmp(icmp_type, code)
        self._answered(key, seen)
        seen.responder = router
        seen.ttl = int(pkt.ttl)
        seen.detail = f"{describe(icmp_type, code)} from {router}"


def _firewall_verdict(key: Key, seen: _Seen, open_ttl: dict[str, int]) -> tuple[bool | None, str]:
    """Whether a reset came from a firewall (by TTL), and the note for the error text.

    True: fewer hops than the destination's own packets; False: the same hop count as an
    open port of the same destination (the host's own reset); None: not a reset, or no
    reference to compare with.
    """
    if seen.state != "refused" or seen.ttl is None:
        return None, ""
    hops_back = _initial_ttl(seen.ttl) - seen.ttl + 1
    if seen.answered_at_ttl is not None and hops_back < seen.answered_at_ttl:
        return True, (
            f"; rejected by a firewall: the reset came from {hops_back} hop(s) away "
            f"but the destination answers from {seen.answered_at_ttl}"
        )
    ref = open_ttl.get(key[0])
    if ref is None:
        return None, ""
    if seen.ttl > ref:
        return True, (
            f"; rejected by a firewall: reset TTL {seen.ttl} shows fewer hops than "
            f"the destination's own SYN-ACK (TTL {ref})"
        )
    return False, ""


def scan(checks: Sequence[CheckSpec], opts: ProbeOptions) -> dict[Key, _Seen]:
    """Blocking: SYN-probe every (address, port), then traceroute the ones not open.

    Each port has a window (the timeout, or the adaptive one of :mod:`agent.probes.rtt`,
    re-read as answers arrive): attempt k goes out at ``k × window / attempts``, and a port
    still silent at the end of its window is ``filtered``. A port not open after its first
    step is traced while its remaining attempts run, so the scan stays within the windows.
    """
    roles = {(c.dst_address, c.port): c.dst_role for c in checks}
    scanner = _Scanner(roles, opts.round_trips())
    try:
        start = time.monotonic()
        while True:
            now = time.monotonic()
            per_dest: dict[tuple[str, str], Window] = {}
            due: list[Key] = []
            trace: list[Key] = []
            end = start
            wake: float | None = None
            for key, seen in scanner.seen.items():
                dest = (key[0], roles[key])
                win = per_dest.get(dest) or per_dest.setdefault(dest, scanner.rtts.window(*dest))
                step = win.seconds / opts.attempts
                end = max(end, start + win.seconds)
                if seen.state is None and now >= start + win.seconds:
                    seen.state = "filtered"
                    seen.detail = win.describe(seen.attempts, roles[key])
                elif seen.state is None:
                    sent = seen.attempts
                    if sent < opts.attempts and start + sent * step <= now:
                        due.append(key)
                        sent += 1
                    t = start + (sent * step if sent < opts.attempts else win.seconds)
                    wake = t if wake is None else min(wake, t)
                if key not in scanner.traced and (
                    seen.state not in (None, "open") or now >= start + step
                ):
                    trace.append(key)
            scanner.syn_round(due)
            scanner.traceroute_round([k for k in trace if scanner.seen[k].state != "open"])
            if scanner.done() or now >= end:
                return scanner.seen
            scanner.receive_until(end if wake is None else wake, scanner.rtts.version)
    finally:
        scanner.close()


async def run(
    checks: Sequence[CheckSpec], opts: ProbeOptions, concurrency: int
) -> list[ProbeResult]:
    """Every check in SYN mode; open ports then get their protocol check over a connection."""
    started_at = time.time()
    v4 = [c for c in checks if ":" not in c.dst_address]
    seen = await asyncio.to_thread(scan, v4, opts) if v4 else {}
    open_ttl = {k[0]: s.ttl for k, s in seen.items() if s.state == "open" and s.ttl is not None}
    sem = asyncio.Semaphore(fd_capped_concurrency(concurrency, opts.attempts))
    v6_round = opts.round_trips()

    async def one(check: CheckSpec) -> ProbeResult:
        key = (check.dst_address, check.port)
        if key not in seen:  # IPv6: connect probe
            async with sem:
                return await connect.probe(check, opts, v6_round)
        s = seen[key]
        service_check = None
        if s.state == "open" and check.service != "tcp" and opts.service_checks:
            async with sem:
                service_check = (await connect.probe(check, opts)).service_check
        last_hop = s.hops[max(s.hops)] if s.hops else None
        from_firewall, note = _firewall_verdict(key, s, open_ttl)
        return make_result(
            check,
            opts,
            state=s.state or "error",
            mode="syn",
            attempts=s.attempts,
            started_at=started_at,
            latency_s=s.latency_s,
            service_check=service_check,
            last_hop=last_hop,
            responder=s.responder if s.state != "open" else None,
            rst_from_firewall=from_firewall,
            error=s.detail + note,
        )

    return list(await asyncio.gather(*(one(c) for c in checks)))
