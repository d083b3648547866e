"""TCP traceroute on a destination port, for the ports that are not open, paced to survive
ICMP rate limiting.

SYNs to the port with growing TTLs: a router where one expires answers ICMP time-exceeded
(its address), and the destination side (the host, or a firewall in front of it) answers
with a reset, a SYN-ACK or an ICMP error. That names the last router that answered and its
hop number, and the smallest TTL at which the destination side answered says how far away
it is: :func:`firewall_verdict` compares that with a reset's own TTL.

Routers rate-limit their ICMP errors per destination (Linux: a burst of 6, then one a second,
``net.ipv4.icmp_ratelimit``), so TTLs are not all sent at once: :class:`Trace` sends one TTL
at a time, :data:`PACE_S` apart (an answer arriving later still counts), stops ascending at
the destination side or after :data:`GIVE_UP` silent TTLs past the last hop that answered,
and retries the silent TTLs up to that point (the hop just past the last answer is the one a
rate-limited router hides) :data:`TRIES` times, ever more spaced. The caller owns the time:
it asks :meth:`Trace.due` what to send now and :meth:`Trace.wake` when to ask again, until
its deadline; what is known by then is the answer.

Two senders: SYN mode's scanner (:mod:`agent.probes.syn`) owns the raw sockets, sends what
:meth:`Tracer.tick` asks for and offers every reply to :meth:`Tracer.on_tcp` or
:meth:`Tracer.on_icmp` first (the TTL rides in the sequence number, ``base + ttl``); connect
mode (:func:`agent.probes.connect.trace`) makes one ``connect()`` per TTL with ``IP_TTL``
set and reads the time-exceeded from the socket's error queue.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from netcheck.agent.probes.icmp import TIME_EXCEEDED

MAX_HOPS = 16
# One TTL after the other, this far apart.
PACE_S = 0.05
# Silent TTLs past the last hop that answered before the trace stops ascending.
GIVE_UP = 4
# Sends of one TTL at most; retry n waits n x RETRY_S after the previous send.
TRIES = 4
RETRY_S = 0.35
Key = tuple[str, int]
# Send one TCP segment to `key`: (key, flags, sequence number, TTL).
Send = Callable[[Key, str, int, int], None]


@dataclasses.dataclass
class Trace:
    """What the traceroute of one (address, port) found, and what it sends next."""

    # The router that answered, per TTL.
    hops: dict[int, str] = dataclasses.field(default_factory=dict)
    # The smallest TTL the destination side answered at, and the TTL its answer arrived with.
    answered_at_ttl: int | None = None
    answer_ttl: int | None = None
    # Pacing: the next TTL going up, when, and each TTL's sends so far and the last one.
    next_ttl: int = 1
    next_at: float = 0.0
    tries: dict[int, int] = dataclasses.field(default_factory=dict)
    last_sent: dict[int, float] = dataclasses.field(default_factory=dict)

    def answered(self, probe_ttl: int, reply_ttl: int) -> None:
        """The destination side answered a traceroute SYN sent with `probe_ttl`."""
        if self.answered_at_ttl is None or probe_ttl < self.answered_at_ttl:
            self.answered_at_ttl, self.answer_ttl = probe_ttl, reply_ttl

    @property
    def last_hop(self) -> str | None:
        return self.hops[max(self.hops)] if self.hops else None

    @property
    def last_hop_hops(self) -> int | None:
        return max(self.hops) if self.hops else None

    def hops_to(self, address: str | None) -> int | None:
        """The hop number at which `address` answered this trace as a router, if it did."""
        found = [ttl for ttl, hop in self.hops.items() if hop == address]
        return min(found) if found else None

    def _candidates(self) -> list[tuple[float, int]]:
        """(when, TTL) of every send still to come, as things stand."""
        top = max(self.hops, default=0)
        stop_at = self.answered_at_ttl or MAX_HOPS + 1
        out: list[tuple[float, int]] = []
        if self.next_ttl < stop_at and self.next_ttl - 1 - top < GIVE_UP:
            out.append((self.next_at, self.next_ttl))
        for ttl in range(1, min(top + 1, self.next_ttl - 1, stop_at - 1) + 1):
            n = self.tries.get(ttl, 0)
            if ttl not in self.hops and 0 < n < TRIES:
                out.append((self.last_sent[ttl] + RETRY_S * n, ttl))
        return out

    def due(self, now: float, limit: int = MAX_HOPS * TRIES) -> list[int]:
        """The TTLs to send now, `limit` at most, longest due first (each counted as sent)."""
        out = [ttl for at, ttl in sorted(self._candidates()) if at <= now][: max(0, limit)]
        for ttl in out:
            if ttl == self.next_ttl:
                self.next_ttl, self.next_at = ttl + 1, now + PACE_S
            self.tries[ttl] = self.tries.get(ttl, 0) + 1
            self.last_sent[ttl] = now
        return out

    def wake(self) -> float | None:
        """When something may be due next (None: the trace has nothing more to send)."""
        return min((at for at, _ in self._candidates()), default=None)


class Tracer:
    """The traceroutes of one SYN scan: what to send, and what the replies say."""

    def __init__(self, base: int, send: Send) -> None:
        self.base = base & 0xFFFFFFFF
        self.send = send
        self.traces: dict[Key, Trace] = {}

    def start(self, keys: Sequence[Key]) -> None:
        """Trace each (address, port) of `keys` from now on (see :meth:`tick`)."""
        for key in keys:
            self.traces.setdefault(key, Trace())

    def tick(self, now: float | None = None) -> float | None:
        """Send what is due; when to tick again (None: nothing more to send)."""
        now = time.monotonic() if now is None else now
        wake: float | None = None
        sent = 0
        for key, trace in self.traces.items():
            for ttl in trace.due(now):
                self.send(key, "S", (self.base + ttl) & 0xFFFFFFFF, ttl)
                sent += 1
                if sent % 64 == 0:
                    time.sleep(0.001)
            at = trace.wake()
            if at is not None:
                wake = at if wake is None else min(wake, at)
        return wake

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


def hops_from_ttl(ttl: int) -> int:
    """Hops a reply that arrived with `ttl` travelled, counted like a traceroute's TTL (its
    sender's initial TTL minus what is left, + 1)."""
    return initial_ttl(ttl) - ttl + 1


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
