"""Connect probe: a full TCP handshake, no privilege needed.

Attempts are staggered inside the check's window (a new SYN every ``window / attempts``
seconds while the earlier ones stay open), so a single lost SYN does not fail a port and a
dropped port costs one window, not ``attempts`` of them. The window is the plan's timeout,
or, when the runner shares a round-trip book (:mod:`agent.probes.rtt`), a multiple of the
round trip measured in the same round to the same destination (else its role, else any
destination). ICMP errors are read from the
socket's error queue (IP_RECVERR) to tell ``prohibited`` from ``unreachable`` and to name the
router that answered.

A port still silent :data:`TRACE_AFTER_S` into its check, or answered by a router's ICMP
error, is traced meanwhile (:func:`trace`: connect() with IP_TTL per TTL, the time-exceeded
read from the error queue, paced against ICMP rate limits), so connect mode names the last
hop and its number too; the trace ends with the check (a filtered port's window, or the
deadline) and reports what it knows by then. A round traces :data:`TRACE_PER_DESTINATION`
checks to one address at once (:data:`TRACE_SLOTS` in all, fitted to the open-file limit);
the others wait for a slot within their own deadline, and one that gets none names no hop,
so a wide sweep of dropped ports costs its attempts' sockets, not 4 more per port.

The caller owns the timeout: one deadline per check (its start + ``timeout_s``, or the one
the caller gives) covers the connect attempts and the protocol check on an open port, which
gets what is left of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import math
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from netcheck.agent.fdlimit import fd_budget
from netcheck.agent.probes import service
from netcheck.agent.probes.base import Outcome, ProbeOptions, make_result
from netcheck.agent.probes.icmp import TIME_EXCEEDED, describe, state_for_errno, state_for_icmp
from netcheck.agent.probes.rtt import RoundTrips, Window, fixed
from netcheck.agent.probes.traceroute import Trace
from netcheck.agent.wire import CheckSpec, ProbeResult, ProbeState

IP_RECVERR = 11
MSG_ERRQUEUE = 0x2000
SO_EE_ORIGIN_ICMP = 2
_EE = struct.Struct("=IBBBBII")


@dataclasses.dataclass
class _Answer:
    """What one connect attempt got."""

    state: ProbeState
    latency_s: float | None
    error: str = ""
    responder: str | None = None
    sock: socket.socket | None = None


def read_icmp_error(sock: socket.socket) -> tuple[int, int, str] | None:
    """(ICMP type, code, offender address) queued on `sock` by IP_RECVERR, if any."""
    try:
        _, ancdata, _, _ = sock.recvmsg(256, 512, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except OSError:
        return None
    for level, kind, data in ancdata:
        if level != socket.SOL_IP or kind != IP_RECVERR or len(data) < _EE.size:
            continue
        _, origin, icmp_type, code, _, _, _ = _EE.unpack_from(data)
        if origin != SO_EE_ORIGIN_ICMP:
            continue
        offender = ""
        if len(data) >= _EE.size + 8:
            offender = socket.inet_ntoa(data[_EE.size + 4 : _EE.size + 8])
        return icmp_type, code, offender
    return None


def _failure(sock: socket.socket, exc: OSError, latency: float) -> _Answer:
    icmp = read_icmp_error(sock) if sock.family == socket.AF_INET else None
    if icmp is not None:
        icmp_type, code, offender = icmp
        text = f"{describe(icmp_type, code)} from {offender}"
        return _Answer(state_for_icmp(icmp_type, code), latency, text, offender or None)
    state = state_for_errno(exc.errno)
    text = errno.errorcode.get(exc.errno or 0, "") + f" {exc.strerror or exc}"
    if state == "refused":
        text = "TCP reset (nothing listening, or a firewall's reject with tcp reset)"
    elif exc.errno == errno.EPERM:
        text = "EPERM: the local firewall forbids this connection"
    return _Answer(state, latency, text.strip())


async def _attempt(
    loop: asyncio.AbstractEventLoop, check: CheckSpec, opts: ProbeOptions
) -> _Answer:
    family = socket.AF_INET6 if ":" in check.dst_address else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return _Answer("error", None, f"cannot create a socket: {exc}")
    keep = False
    try:
        sock.setblocking(False)
        if family == socket.AF_INET:
            sock.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
        if opts.bind_address:
            sock.bind((opts.bind_address, 0))
        t0 = time.monotonic()
        try:
            await loop.sock_connect(sock, (check.dst_address, check.port))
        except OSError as exc:
            return _failure(sock, exc, time.monotonic() - t0)
        keep = True
        return _Answer("open", time.monotonic() - t0, sock=sock)
    except OSError as exc:
        return _Answer("error", None, f"{type(exc).__name__}: {exc}")
    finally:
        if not keep:
            sock.close()


_ANSWERED: frozenset[str] = frozenset({"open", "refused", "unreachable", "prohibited"})


async def _wait_any(
    pending: set[asyncio.Task[_Answer]],
    rtts: RoundTrips | None,
    addr: str,
    role: str,
    wait_s: float,
) -> set[asyncio.Task[_Answer]]:
    """The attempts that finished within `wait_s`, cut short when the window moves."""
    if rtts is None or not rtts.adaptive:
        done, _ = await asyncio.wait(
            pending, timeout=max(0.0, wait_s), return_when="FIRST_COMPLETED"
        )
        return done
    moved = rtts.changed(addr, role)
    try:
        waiting: list[asyncio.Future[Any]] = [*pending, moved]
        await asyncio.wait(waiting, timeout=max(0.0, wait_s), return_when="FIRST_COMPLETED")
    finally:
        rtts.forget(addr, role, moved)
    return {t for t in pending if t.done()}


async def connect(
    check: CheckSpec,
    opts: ProbeOptions,
    rtts: RoundTrips | None = None,
    deadline: float | None = None,
) -> tuple[_Answer | None, int, Window]:
    """The first answer among staggered attempts, how many were sent, and the window waited.

    The window is the check's timeout, or with `rtts` (one book per round) the adaptive one
    for its destination, re-read whenever the book says it moved; attempt k goes out at
    ``k × window / attempts``. Nothing is waited for past `deadline` (loop time), if given.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    stop = math.inf if deadline is None else deadline
    pending: set[asyncio.Task[_Answer]] = set()
    launched = 0
    answer: _Answer | None = None
    addr, role = check.dst_address, check.dst_role
    win = rtts.window(addr, role) if rtts is not None else fixed(opts.timeout_s)
    try:
        while answer is None:
            now = loop.time()
            if now >= min(start + win.seconds, stop):
                break
            step = win.seconds / opts.attempts
            while launched < opts.attempts and start + launched * step <= now:
                pending.add(asyncio.create_task(_attempt(loop, check, opts)))
                launched += 1
            wake = start + (launched * step if launched < opts.attempts else win.seconds)
            done = await _wait_any(pending, rtts, addr, role, min(wake, stop) - loop.time())
            for task in done & pending:
                pending.discard(task)
                outcome = task.result()
                if rtts is not None and outcome.state in _ANSWERED and outcome.latency_s:
                    rtts.add(addr, role, outcome.latency_s)
                if answer is None:
                    answer = outcome
                elif outcome.sock is not None:
                    outcome.sock.close()
            if rtts is not None:
                win = rtts.window(addr, role)
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                late = await task
                if late.sock is not None:
                    late.sock.close()
    return answer, launched, win


# Connect-mode traceroute: one TTL-limited connect() waits this long at most, and one
# traced check holds this many of them at once (on top of its staggered attempts).
TRACE_ATTEMPT_S = 0.5
TRACE_SOCKETS = 4
# Checks of one round traced at once: in all, and to one destination address (the routers on
# the way rate-limit their ICMP errors to us anyway: a burst of 6, then 1 a second on Linux).
TRACE_SLOTS = 256
TRACE_PER_DESTINATION = 32
# A check still unanswered this long after its start is traced while its attempts go on.
TRACE_AFTER_S = 0.1
_TRACED: frozenset[str] = frozenset({"unreachable", "prohibited"})


async def _ttl_attempt(
    check: CheckSpec, opts: ProbeOptions, ttl: int, wait_s: float
) -> tuple[int, str | None, bool]:
    """One connect() with IP_TTL `ttl`: (ttl, the router that said its time exceeded, whether
    the destination side answered: a connection, a reset or another ICMP error)."""
    loop = asyncio.get_running_loop()
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return ttl, None, False
    with sock:
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
            sock.setsockopt(socket.SOL_IP, socket.IP_TTL, ttl)
            if opts.bind_address:
                sock.bind((opts.bind_address, 0))
            await asyncio.wait_for(
                loop.sock_connect(sock, (check.dst_address, check.port)), max(0.0, wait_s)
            )
        except TimeoutError:
            return ttl, None, False
        except OSError as exc:
            icmp = read_icmp_error(sock)
            if icmp is not None and icmp[0] == TIME_EXCEEDED:
                return ttl, icmp[2] or None, False
            return ttl, None, icmp is not None or exc.errno == errno.ECONNREFUSED
    return ttl, None, True


async def trace(check: CheckSpec, opts: ProbeOptions, stop: float, route: Trace) -> Trace:
    """TCP traceroute of `check`'s port by connect() with IP_TTL, paced like SYN mode's
    (:class:`~netcheck.agent.probes.traceroute.Trace`), until the destination side answers,
    nothing is left to send, or `stop` (loop time). Fills `route` as answers arrive, so a
    caller that cancels it keeps what is known."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[tuple[int, str | None, bool]]] = set()
    try:
        while route.answered_at_ttl is None:
            now = loop.time()
            if now >= stop:
                break
            for ttl in route.due(now, TRACE_SOCKETS - len(pending)):
                wait = min(TRACE_ATTEMPT_S, stop - now)
                pending.add(asyncio.create_task(_ttl_attempt(check, opts, ttl, wait)))
            wake = route.wake()
            if wake is None and not pending:
                break
            until = stop if wake is None else min(stop, wake)
            if not pending:
                await asyncio.sleep(max(0.0, until - loop.time()))
                continue
            done, pending = await asyncio.wait(
                pending, timeout=max(0.0, until - loop.time()), return_when="FIRST_COMPLETED"
            )
            for task in done:
                ttl, router, answered = task.result()
                if router is not None:
                    route.hops[ttl] = router
                elif answered:
                    route.answered(ttl, 0)
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return route


class TraceSlots:
    """One round's trace slots: at most `total` checks traced at once, `per_destination` of
    them to one address; the others wait in line (first come, first served) until their
    deadline, and a check that never got a slot names no hop."""

    def __init__(self, total: int, per_destination: int = TRACE_PER_DESTINATION) -> None:
        self.total = asyncio.Semaphore(max(1, total))
        self.per_destination = max(1, per_destination)
        self.destinations: dict[str, asyncio.Semaphore] = {}

    async def trace(self, check: CheckSpec, opts: ProbeOptions, stop: float, route: Trace) -> Trace:
        """:func:`trace` of `check` once it holds a slot, if that comes before `stop`."""
        addr = check.dst_address
        dest = self.destinations.setdefault(addr, asyncio.Semaphore(self.per_destination))
        left = stop - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(0.0, left)):
                await dest.acquire()
        except TimeoutError:
            return route
        try:
            left = stop - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(0.0, left)):
                    await self.total.acquire()
            except TimeoutError:
                return route
            try:
                return await trace(check, opts, stop, route)
            finally:
                self.total.release()
        finally:
            dest.release()


async def touch(address: str, port: int, opts: ProbeOptions, deadline: float) -> bool:
    """One real connection to `address`:`port`, closed at once (by `deadline`, loop time):
    True when it was established. SYN mode's evidence for the destination's listener (which
    logs the peer address it saw, NAT included) where no protocol check connects."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        try:
            if opts.bind_address:
                sock.bind((opts.bind_address, 0))
            left = deadline - loop.time()
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), max(0.0, left))
        except (OSError, TimeoutError):
            return False
    return True


async def probe(
    check: CheckSpec,
    opts: ProbeOptions,
    rtts: RoundTrips | None = None,
    deadline: float | None = None,
    slots: TraceSlots | None = None,
) -> ProbeResult:
    """One check, all of it (attempts and protocol check) by `deadline` (loop time; default:
    ``timeout_s`` from now); with `rtts` (shared by a round) a silent port waits the adaptive
    window; with `slots` (shared by a round) its traceroute waits for a slot."""
    loop = asyncio.get_running_loop()
    started_at = time.time()
    if deadline is None:
        deadline = loop.time() + opts.timeout_s
    route = Trace()
    tracing: asyncio.Task[Trace] | None = None
    knocking = asyncio.ensure_future(connect(check, opts, rtts, deadline))
    tracer = trace if slots is None else slots.trace
    try:
        if ":" not in check.dst_address:
            await asyncio.wait({knocking}, timeout=TRACE_AFTER_S)
            if not knocking.done():  # silent so far: trace while the attempts go on
                tracing = asyncio.create_task(tracer(check, opts, deadline, route))
        answer, attempts, win = await knocking
        if answer is not None and answer.state in _TRACED:
            # Answered by a router at once: the rest of the deadline names its hop.
            if tracing is None:
                tracing = asyncio.create_task(tracer(check, opts, deadline, route))
            await tracing
    finally:
        knocking.cancel()
        if tracing is not None:
            tracing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tracing
    if answer is None or (answer.state != "open" and answer.state != "refused"):
        hops = (route.last_hop, route.last_hop_hops)
    else:
        hops = (None, None)
    if answer is None:
        found = Outcome(
            "filtered",
            attempts,
            error=win.describe(attempts, check.dst_role),
            last_hop=hops[0],
            last_hop_hops=hops[1],
        )
        return make_result(check, opts, "connect", started_at, found)
    service_check = None
    if answer.sock is not None:
        if opts.service_checks:
            # The check owns the connected socket from here on and closes it, in the time
            # that is left of this check's.
            left = deadline - loop.time()
            service_check = await service.check(check.service, answer.sock, check.dst_address, left)
        else:
            answer.sock.close()
    found = Outcome(
        state=answer.state,
        attempts=attempts,
        latency_s=answer.latency_s,
        service_check=service_check,
        responder=answer.responder,
        error=answer.error,
        last_hop=hops[0],
        last_hop_hops=hops[1],
        responder_hops=route.hops_to(answer.responder),
    )
    return make_result(check, opts, "connect", started_at, found)


async def run(
    checks: Sequence[CheckSpec], opts: ProbeOptions, concurrency: int
) -> list[ProbeResult]:
    """Connect-probe every check, at most `concurrency` at once; results in input order.

    The probes of one call are one round: they share a round-trip book, so with
    ``opts.min_timeout_s`` > 0 a silent port waits a multiple of the round trip measured to
    its destination in this round instead of the whole timeout. Their traceroutes share
    :data:`TRACE_SLOTS` slots (:class:`TraceSlots`). The concurrency is lowered to what the
    open-file limit holds, the slots' sockets counted once
    (:func:`~netcheck.agent.fdlimit.fd_budget`).
    """
    cap, pool = fd_budget(concurrency, opts.attempts, min(TRACE_SLOTS, concurrency), TRACE_SOCKETS)
    sem = asyncio.Semaphore(cap)
    slots = TraceSlots(pool)
    rtts = opts.round_trips()

    async def one(check: CheckSpec) -> ProbeResult:
        async with sem:
            return await probe(check, opts, rtts, slots=slots)

    return list(await asyncio.gather(*(one(c) for c in checks)))
