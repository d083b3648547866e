"""TCP traceroute on a destination port, for the SYN scanner's ports that are not open.

SYNs to the port with TTL 1 to :data:`MAX_HOPS`, from the scanner's source port, carrying
the TTL in the sequence number (``base + ttl``): a router where one expires answers ICMP
time-exceeded quoting it, and the destination side (the host, or a firewall in front of it)
answers with a reset that acknowledges it or an ICMP error that quotes it. That names the
last router that answered, and the smallest TTL at which the destination side answered says
how far away it is: :func:`firewall_verdict` compares that with a reset's own TTL.

The scanner (:mod:`agent.probes.syn`) owns the raw sockets: it sends what
:meth:`Tracer.start` asks for and offers every reply to :meth:`Tracer.on_tcp` or
:meth:`Tracer.on_icmp` first. No scapy here: the scanner dissects the replies.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from netcheck.agent.probes.icmp import TIME_EXCEEDED

MAX_HOPS = 16
Key = tuple[str, int]
# Send one TCP segment to `key`: (key, flags, sequence number, TTL).
Send = Callable[[Key, str, int, int], None]


@dataclasses.dataclass
class Trace:
    """What the traceroute of one (address, port) found."""

    # The router that answered, per TTL.
    hops: dict[int, str] = dataclasses.field(default_factory=dict)
    # The smallest TTL the destination side answered at, and the TTL its answer arrived with.
    answered_at_ttl: int | None = None
    answer_ttl: int | None = None

    def answered(self, probe_ttl: int, reply_ttl: int) -> None:
        """The destination side answered a traceroute SYN sent with `probe_ttl`."""
        if self.answered_at_ttl is None or probe_ttl < self.answered_at_ttl:
            self.answered_at_ttl, self.answer_ttl = probe_ttl, reply_ttl

    @property
    def last_hop(self) -> str | None:
        return self.hops[max(self.hops)] if self.hops else None


class Tracer:
    """The traceroutes of one scan: what to send, and what the replies say."""

    def __init__(self, base: int, send: Send) -> None:
        self.base = base & 0xFFFFFFFF
        self.send = send
        self.traces: dict[Key, Trace] = {}

    def start(self, keys: Sequence[Key]) -> None:
        """Send the TTL 1 to MAX_HOPS SYNs of each (address, port) in `keys`."""
        for n, key in enumerate(keys):
            self.traces.setdefault(key, Trace())
            for ttl in range(1, MAX_HOPS + 1):
                self.send(key, "S", (self.base + ttl) & 0xFFFFFFFF, ttl)
            if n % 16 == 15:
                time.sleep(0.001)

    def traced(self, key: Key) -> bool:
        return key in self.traces

    def finished(self, key: Key) -> bool:
        """Not traced, or its destination side has answered."""
        trace = self.traces.get(key)
        return trace is None or trace.answered_at_ttl is not None

    def _ttl(self, seq: int) -> int | None:
        ttl = (seq - self.base) & 0xFFFFFFFF
        return ttl if 1 <= ttl <= MAX_HOPS else None

    def on_tcp(self, key: Key, ack: int, reply_ttl: int) -> bool:
        """A TCP reply from `key` acknowledging `ack`: True when it answers a traceroute SYN."""
        ttl = self._ttl(ack - 1)
        if ttl is None:
            return False
        trace = self.traces.get(key)
        if trace is not None:
            trace.answered(ttl, reply_ttl)
        return True

    def on_icmp(self, key: Key, seq: int, icmp_type: int, router: str, reply_ttl: int) -> bool:
        """An ICMP error from `router` quoting a SYN to `key` with sequence number `seq`:
        True when that SYN was a traceroute one."""
        ttl = self._ttl(seq)
        if ttl is None:
            return False
        trace = self.traces.get(key)
        if trace is not None:
            if icmp_type == TIME_EXCEEDED:
                trace.hops[ttl] = router
            else:
                trace.answered(ttl, reply_ttl)
        return True


def initial_ttl(ttl: int) -> int:
    """The TTL a packet most likely left its sender with (the next common default)."""
    return next(t for t in (32, 64, 128, 255) if ttl <= t)


def firewall_verdict(
    reset_ttl: int, trace: Trace | None, open_ttl: int | None
) -> tuple[bool | None, str]:
    """Whether a reset that arrived with `reset_ttl` came from a firewall, and the note for
    the error text.

    True: fewer hops than the destination side answers the traceroute from, or than the
    destination's own SYN-ACK (`open_ttl`, from an open port of the same address); False:
    the same hop count as that SYN-ACK (the host's own reset); None: no reference.
    """
    hops_back = initial_ttl(reset_ttl) - reset_ttl + 1
    away = trace.answered_at_ttl if trace is not None else None
    if away is not None and hops_back < away:
        return True, (
            f"; rejected by a firewall: the reset came from {hops_back} hop(s) away "
            f"but the destination answers from {away}"
        )
    if open_ttl is None:
        return None, ""
    if reset_ttl > open_ttl:
        return True, (
            f"; rejected by a firewall: reset TTL {reset_ttl} shows fewer hops than "
            f"the destination's own SYN-ACK (TTL {open_ttl})"
        )
    return False, ""
