"""Connect probe: a full TCP handshake, no privilege needed.

Attempts are staggered inside the check's timeout (a new SYN every ``timeout / attempts``
seconds while the earlier ones stay open), so a single lost SYN does not fail a port and a
dropped port costs one timeout, not ``attempts`` of them. ICMP errors are read from the
socket's error queue (IP_RECVERR) to tell ``prohibited`` from ``unreachable`` and to name the
router that answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import socket
import struct
import time

from agent.probes import ProbeOptions, make_result, service
from agent.probes.icmp import describe, state_for_errno, state_for_icmp
from agent.wire import CheckSpec, ProbeResult, ProbeState

IP_RECVERR = 11
MSG_ERRQUEUE = 0x2000
SO_EE_ORIGIN_ICMP = 2
_EE = struct.Struct("=IBBBBII")


@dataclasses.dataclass
class _Outcome:
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


def _failure(sock: socket.socket, exc: OSError, latency: float) -> _Outcome:
    icmp = read_icmp_error(sock) if sock.family == socket.AF_INET else None
    if icmp is not None:
        icmp_type, code, offender = icmp
        text = f"{describe(icmp_type, code)} from {offender}"
        return _Outcome(state_for_icmp(icmp_type, code), latency, text, offender or None)
    state = state_for_errno(exc.errno)
    text = errno.errorcode.get(exc.errno or 0, "") + f" {exc.strerror or exc}"
    if state == "refused":
        text = "TCP reset (nothing listening, or a firewall's reject with tcp reset)"
    elif exc.errno == errno.EPERM:
        text = "EPERM: the local firewall forbids this connection"
    return _Outcome(state, latency, text.strip())


async def _attempt(
    loop: asyncio.AbstractEventLoop, check: CheckSpec, opts: ProbeOptions
) -> _Outcome:
    family = socket.AF_INET6 if ":" in check.dst_address else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return _Outcome("error", None, f"cannot create a socket: {exc}")
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
        return _Outcome("open", time.monotonic() - t0, sock=sock)
    except OSError as exc:
        return _Outcome("error", None, f"{type(exc).__name__}: {exc}")
    finally:
        if not keep:
            sock.close()


async def connect(check: CheckSpec, opts: ProbeOptions) -> tuple[_Outcome | None, int]:
    """The first answer among staggered attempts, and how many attempts were sent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + opts.timeout_s
    step = opts.timeout_s / opts.attempts
    pending: set[asyncio.Task[_Outcome]] = set()
    launched = 0
    answer: _Outcome | None = None
    try:
        while answer is None:
            now = loop.time()
            if now >= deadline:
                break
            if launched < opts.attempts:
                pending.add(asyncio.create_task(_attempt(loop, check, opts)))
                launched += 1
            wait_until = deadline if launched >= opts.attempts else min(deadline, now + step)
            done, pending = await asyncio.wait(
                pending, timeout=max(0.0, wait_until - loop.time()), return_when="FIRST_COMPLETED"
            )
            for task in done:
                outcome = task.result()
                if answer is None:
                    answer = outcome
                elif outcome.sock is not None:
                    outcome.sock.close()
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                late = await task
                if late.sock is not None:
                    late.sock.close()
    return answer, launched


async def probe(check: CheckSpec, opts: ProbeOptions) -> ProbeResult:
    started_at = time.time()
    answer, attempts = await connect(check, opts)
    if answer is None:
        return make_result(
            check,
            opts,
            state="filtered",
            mode="connect",
            attempts=attempts,
            started_at=started_at,
            error=f"no answer to {attempts} SYN(s) within {opts.timeout_s:g} s",
        )
    service_check = None
    if answer.sock is not None:
        if opts.service_checks:
            # The check owns the connected socket from here on and closes it.
            service_check = await service.check(
                check.service, answer.sock, check.dst_address, opts.timeout_s
            )
        else:
            answer.sock.close()
    return make_result(
        check,
        opts,
        state=answer.state,
        mode="connect",
        attempts=attempts,
        started_at=started_at,
        latency_s=answer.latency_s,
        service_check=service_check,
        responder=answer.responder,
        error=answer.error,
    )
