"""Adaptive give-up time: how long a silent port is waited for, from this round's round trips.

Every port that answers (open, refused, an ICMP error) gives a round-trip sample for its
destination address. A silent port gives up after ``clamp(rtt_factor × rtt, min_timeout_s,
timeout_s)`` where ``rtt`` is the largest sample to the same address in this round, else the
largest to any destination of the same role, else the largest to any destination at all in
this round, else (no sample at all) the full ``timeout_s``.
``min_timeout_s == 0`` turns adaptation off: every port waits ``timeout_s``.

Why the round-wide fallback is safe: HDM's published requirement is a round trip under 30 ms
between its sites, so every path of an HDM site, measured or not, is within 30 ms. The window
is never below the floor (0.5 s by policy, 16 × 30 ms), and our 3 staggered SYNs fit in it;
a host none of whose ports answered (every port dropped) then costs the floor, not the whole
timeout, as soon as any port of any destination has answered in the round. Only a round in
which nothing answered waits ``timeout_s``.

The book is shared by the probes of one round. Windows change while the round runs (the
first answer shortens them, a slower answer lengthens them); connect probes wait on
:meth:`RoundTrips.changed`, which fires only when a window they depend on changed by more
than a few per cent, so thousands of silent ports are not woken by every answer. A port
waiting on the full timeout (no sample for its host or role yet) is woken by the first sample
of the round, wherever it comes from.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from typing import Literal

# A window that moves by less than this fraction does not wake the probes that use it.
_NOTICE = 0.05

# Whose round trip set a window: the port's own address, another host of its role, or the
# largest of the whole round (no sample from this host or role).
Scope = Literal["host", "role", "round"]


@dataclasses.dataclass(frozen=True)
class Window:
    """How long a silent port is waited for, and why."""

    seconds: float
    limit_s: float
    rtt_s: float | None = None
    # The address whose round trip set the window, and how it relates to the port's own.
    rtt_from: str = ""
    scope: Scope = "host"
    factor: float = 0.0
    floor_s: float = 0.0
    adaptive: bool = False

    def describe(self, attempts: int, role: str = "") -> str:
        """The ``error`` text of a filtered port: what was waited, and why that long."""
        head = f"no answer to {attempts} SYN(s) within {self.seconds:.2f} s"
        if not self.adaptive:
            return f"no answer to {attempts} SYN(s) within {self.seconds:g} s"
        if self.rtt_s is None:
            return (
                f"{head} (no port answered in this round, so the full limit of {self.limit_s:g} s)"
            )
        bound = ""
        if self.seconds <= self.floor_s and self.factor * self.rtt_s < self.floor_s:
            bound = f", raised to the {self.floor_s:g} s floor"
        elif self.seconds >= self.limit_s and self.factor * self.rtt_s > self.limit_s:
            bound = ", cut to the limit"
        if self.scope == "round":
            what = (
                f"the largest round trip measured in this round, {_ms(self.rtt_s)} to "
                f"{self.rtt_from}; no sample from this host or role"
            )
        else:
            other = f" (another {role or 'same-role'} host)" if self.scope == "role" else ""
            what = f"the {_ms(self.rtt_s)} round trip to {self.rtt_from}{other}"
        return f"{head} (adaptive: {self.factor:g} × {what}{bound}; limit {self.limit_s:g} s)"


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def fixed(timeout_s: float) -> Window:
    return Window(seconds=timeout_s, limit_s=timeout_s)


class RoundTrips:
    """Round-trip samples of one probe round, per destination address, per role, overall."""

    def __init__(self, factor: float, floor_s: float, limit_s: float) -> None:
        self.factor = max(0.0, factor)
        self.floor_s = floor_s
        self.limit_s = limit_s
        self._by_addr: dict[str, float] = {}
        self._by_role: dict[str, tuple[float, str]] = {}
        # The largest sample of the round, and the window it gave when its waiters last woke.
        self._largest: tuple[float, str] | None = None
        self._largest_woke_s: float | None = None
        # Bumped whenever a largest sample grows (raw mode polls this instead of waiting).
        self.version = 0
        # role -> address -> futures of probes waiting for that address's window to change
        self._waiters: dict[str, dict[str, set[asyncio.Future[None]]]] = {}

    @property
    def adaptive(self) -> bool:
        return self.floor_s > 0

    def _seconds(self, rtt: float) -> float:
        return min(max(self.factor * rtt, self.floor_s), self.limit_s)

    def window(self, addr: str, role: str) -> Window:
        if not self.adaptive:
            return fixed(self.limit_s)
        base = Window(
            seconds=self.limit_s,
            limit_s=self.limit_s,
            factor=self.factor,
            floor_s=self.floor_s,
            adaptive=True,
        )
        scope: Scope
        if addr in self._by_addr:
            rtt, src, scope = self._by_addr[addr], addr, "host"
        elif role in self._by_role:
            (rtt, src), scope = self._by_role[role], "role"
        elif self._largest is not None:
            (rtt, src), scope = self._largest, "round"
        else:
            return base
        return dataclasses.replace(
            base, seconds=self._seconds(rtt), rtt_s=rtt, rtt_from=src, scope=scope
        )

    def add(self, addr: str, role: str, rtt: float) -> None:
        """A port of `addr` answered after `rtt` seconds."""
        if not self.adaptive or rtt < 0:
            return
        old = self._by_addr.get(addr)
        old_role = self._by_role.get(role)
        largest = self._largest is None or rtt > self._largest[0]
        if old is None or rtt > old or old_role is None or rtt > old_role[0] or largest:
            self.version += 1
        if old is None or rtt > old:
            before = self.window(addr, role).seconds
            self._by_addr[addr] = rtt
            self._wake_if_moved(role, addr, before, first=old is None)
        if old_role is None or rtt > old_role[0]:
            waiting = self._waiters.get(role, {})
            fallback = [a for a in waiting if a not in self._by_addr]
            befores = {a: self.window(a, role).seconds for a in fallback}
            self._by_role[role] = (rtt, addr)
            for a in fallback:
                self._wake_if_moved(role, a, befores[a], first=old_role is None)
        if largest:
            self._largest = (rtt, addr)
            self._wake_round_fallbacks()

    def _wake_if_moved(self, role: str, addr: str, before: float, first: bool) -> None:
        after = self.window(addr, role).seconds
        if not first and abs(after - before) <= _NOTICE * before:
            return
        for fut in self._waiters.get(role, {}).pop(addr, set()):
            if not fut.done():
                fut.set_result(None)

    def _wake_round_fallbacks(self) -> None:
        """Wake the ports whose role has no sample yet: their window is the round's largest.

        The first sample of the round wakes them all (they were waiting on the full limit);
        later, only a move of more than a few per cent since they last woke does, so a round
        whose samples keep growing wakes them a bounded number of times.
        """
        assert self._largest is not None
        seconds = self._seconds(self._largest[0])
        woke = self._largest_woke_s
        if woke is not None and abs(seconds - woke) <= _NOTICE * woke:
            return
        self._largest_woke_s = seconds
        for role in [r for r in self._waiters if r not in self._by_role]:
            for futs in self._waiters.pop(role).values():
                for fut in futs:
                    if not fut.done():
                        fut.set_result(None)

    def changed(self, addr: str, role: str) -> asyncio.Future[None]:
        """A future resolved when the window of `addr` moves; :meth:`forget` it after waiting."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(role, {}).setdefault(addr, set()).add(fut)
        return fut

    def forget(self, addr: str, role: str, fut: asyncio.Future[None]) -> None:
        by_addr = self._waiters.get(role)
        if by_addr is None:
            return
        futs = by_addr.get(addr)
        if futs is not None:
            futs.discard(fut)
            if not futs:
                del by_addr[addr]
        fut.cancel()


# -- Round trip, jitter and loss of a data path (issue 16) --------------------------------
# The book above only sets give-up windows from the answers a round happens to get; a data
# path is qualified by a short series of its own: connects and small exchanges on the data
# port (not ICMP, which firewalls treat differently), each sample one TCP handshake and one
# echo through the peer's stand-in (agent.measure, ECHO session).

ECHO_PAYLOAD = b"netcheck-rtt-0123456789abcdef\n"


@dataclasses.dataclass(frozen=True)
class Series:
    """A series of samples on one (address, port): handshake and echo round trips."""

    address: str
    port: int
    sent: int
    # Round trip of each answered sample (the echo's where it came back, else the
    # handshake's), in order.
    samples_s: tuple[float, ...] = ()
    handshakes_s: tuple[float, ...] = ()
    error: str = ""

    @property
    def answered(self) -> int:
        return len(self.samples_s)

    @property
    def loss(self) -> float:
        """The share of samples whose connect got no answer within the timeout (0..1): TCP
        hides a lost data segment as delay, so loss is read where TCP shows it, on SYNs."""
        return 1.0 - self.answered / self.sent if self.sent else 1.0

    @property
    def rtt_min_s(self) -> float | None:
        return min(self.samples_s) if self.samples_s else None

    @property
    def rtt_avg_s(self) -> float | None:
        return sum(self.samples_s) / len(self.samples_s) if self.samples_s else None

    @property
    def rtt_max_s(self) -> float | None:
        return max(self.samples_s) if self.samples_s else None

    @property
    def jitter_s(self) -> float | None:
        """Mean absolute difference of consecutive round trips (RFC 3550's D, unsmoothed)."""
        s = self.samples_s
        if len(s) < 2:
            return 0.0 if s else None
        return sum(abs(b - a) for a, b in itertools.pairwise(s)) / (len(s) - 1)


def _sample(address: str, port: int, timeout_s: float, bind: str) -> tuple[float, float | None]:
    """One handshake and one echo: their round trips (echo None when it did not come back).
    Raises OSError when the connect itself fails."""
    import socket
    import struct
    import time

    from netcheck.agent import measure

    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if bind:
            sock.bind((bind, 0))
        sock.settimeout(timeout_s)
        t0 = time.perf_counter()
        sock.connect((address, port))
        hand = time.perf_counter() - t0
        sock.sendall(measure.request_line("echo"))
        got = b""
        t1 = time.perf_counter()
        sock.sendall(ECHO_PAYLOAD)
        try:
            while len(got) < len(ECHO_PAYLOAD):
                chunk = sock.recv(len(ECHO_PAYLOAD) - len(got))
                if not chunk:
                    return hand, None
                got += chunk
        except OSError:
            return hand, None
        return hand, time.perf_counter() - t1
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def series(
    address: str,
    port: int,
    count: int = 10,
    timeout_s: float = 1.0,
    interval_s: float = 0.05,
    bind: str = "",
) -> Series:
    """`count` samples (at most 1,000), `interval_s` apart; blocking, at most about
    count x (2 x timeout_s + interval_s)."""
    import time

    count = max(1, min(count, 1000))
    samples: list[float] = []
    hands: list[float] = []
    error = ""
    for i in range(count):
        if i:
            time.sleep(interval_s)
        try:
            hand, echo = _sample(address, port, timeout_s, bind)
        except OSError as exc:
            error = str(exc) or type(exc).__name__
            continue
        hands.append(hand)
        samples.append(hand if echo is None else echo)
    return Series(address, port, count, tuple(samples), tuple(hands), error)


async def measure_series(
    address: str, port: int, count: int = 10, timeout_s: float = 1.0, bind: str = ""
) -> Series:
    """:func:`series` in a thread."""
    return await asyncio.to_thread(series, address, port, count, timeout_s, 0.05, bind)
