"""The agent's side of the request channel: take requests, run them one at a time, report.

The controller hands this agent its pending requests (:class:`~agent.wire.AgentRequest`) in
the results ack and in the answer of ``POST /api/v1/agent-requests``, which the agent also
polls every ``poll_s`` while it serves (:func:`serve`). Each request is acknowledged at once
(a report with state ``running``), then run by its kind's handler (:data:`HANDLERS`) within
its deadline, and reported ``done`` or ``failed``. A request seen before (by id), of a kind
this agent does not know, or past its deadline is reported ``failed`` with the reason and
never run. Reports wait in the link until the controller took them
(:meth:`~agent.link.Link.exchange`). To add a kind: a handler here, see ``agent/wire.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from netcheck.agent.errors import LinkError
from netcheck.agent.wire import AgentRequest, Plan, ProbeMode, RequestReport

log = logging.getLogger(__name__)

# Ids remembered (a request handed over again is not run twice), and requests queued.
SEEN = 4096
QUEUED = 64


@dataclasses.dataclass(frozen=True)
class Context:
    """What a handler may use: the agent's current plan and probe mode."""

    plan: Plan
    mode: ProbeMode
    bind_address: str = ""


Handler = Callable[[AgentRequest, Context, float], Awaitable[RequestReport]]


def numbers(req: AgentRequest) -> dict[str, float]:
    return {p.name: float(p.value) for p in req.params if not isinstance(p.value, str)}


async def exposure(req: AgentRequest, ctx: Context, deadline_s: float) -> RequestReport:
    """Sweep every port of each host the plan probes (agent.probes.exposure)."""
    from netcheck.agent.probes.exposure import SweepOptions, sweep

    n = numbers(req)
    defaults = SweepOptions()
    opts = SweepOptions(
        first_port=int(n.get("first_port", defaults.first_port)),
        last_port=int(n.get("last_port", defaults.last_port)),
        rate=n.get("rate", defaults.rate),
        concurrency=int(n.get("concurrency", defaults.concurrency)),
        timeout_s=n.get("timeout", defaults.timeout_s),
        retries=int(n.get("retries", defaults.retries)),
        bind_address=ctx.bind_address,
    )
    if not 1 <= opts.first_port <= opts.last_port <= 65535:
        raise ValueError(f"ports {opts.first_port}-{opts.last_port} are not within 1-65535")
    swept, ports = await sweep(ctx.plan, opts, ctx.mode, deadline_s)
    whole = all(s.complete for s in swept)
    detail = (
        f"{len(swept)} host(s), ports {opts.first_port}-{opts.last_port}, {ctx.mode} mode, "
        f"{len(ports)} open" + ("" if whole else "; cut short by the deadline")
    )
    return RequestReport(req.id, req.kind, "done", time.time(), detail, tuple(swept), tuple(ports))


async def interconnect(req: AgentRequest, ctx: Context, deadline_s: float) -> RequestReport:
    """Qualify each data path of the plan (agent.qualify): path MTU and round trip, and
    throughput both ways when the request says ``throughput`` 1. One path at a time; the
    paths left when the deadline comes are not measured (said in the detail)."""
    from netcheck.agent.qualify import measure

    n = numbers(req)
    with_tp = n.get("throughput", 0) >= 1
    end = time.monotonic() + deadline_s
    out = []
    for spec in ctx.plan.paths:
        # a path costs at most its MTU search, its samples and both throughput runs
        need = 35.0 + spec.rtt_samples * 2.1 + (2 * spec.throughput_seconds + 12 if with_tp else 0)
        if time.monotonic() + need > end:
            break
        out.append(await asyncio.to_thread(measure, spec, ctx.plan.host, with_tp, ctx.bind_address))
    left = len(ctx.plan.paths) - len(out)
    detail = f"{len(out)} path(s) measured" + (" with throughput" if with_tp else "")
    if left:
        detail += f"; {left} not measured before the deadline"
    return RequestReport(req.id, req.kind, "done", time.time(), detail, paths=tuple(out))


HANDLERS: dict[str, Handler] = {"exposure": exposure, "interconnect": interconnect}


class Requests:
    """Requests received and not yet run, and the ids already seen."""

    def __init__(self, report: Callable[[RequestReport], None]) -> None:
        self._report = report
        self._queue: deque[AgentRequest] = deque()
        self._seen: deque[str] = deque(maxlen=SEEN)
        self._seen_set: set[str] = set()
        self.wake = asyncio.Event()
        self.ran = 0

    def _remember(self, rid: str) -> None:
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(rid)
        self._seen_set.add(rid)

    def offer(self, requests: Iterable[AgentRequest], now: float | None = None) -> None:
        """Queue the requests not seen before (each acknowledged at once: ``running``)."""
        now = time.time() if now is None else now
        for req in requests:
            if req.id in self._seen_set:
                continue
            self._remember(req.id)
            if req.kind not in HANDLERS:
                self._fail(req, f"this agent does not know the kind {req.kind!r}")
            elif req.deadline <= now:
                self._fail(req, "its deadline passed before the agent received it")
            elif len(self._queue) >= QUEUED:
                self._fail(req, f"{QUEUED} requests queued already")
            else:
                self._queue.append(req)
                self._report(RequestReport(req.id, req.kind, "running", now, "queued"))
        if self._queue:
            self.wake.set()

    def _fail(self, req: AgentRequest, why: str) -> None:
        log.warning("request %s (%s) failed: %s", req.id, req.kind, why)
        self._report(RequestReport(req.id, req.kind, "failed", time.time(), why))

    async def run_next(self, ctx: Context) -> bool:
        """Run the oldest queued request (False when none is queued)."""
        if not self._queue:
            self.wake.clear()
            return False
        req = self._queue.popleft()
        left = req.deadline - time.time()
        if left <= 0:
            self._fail(req, "its deadline passed while it was queued")
            return True
        log.info(
            "request %s: %s for %s/%s, %.0f s left", req.id, req.kind, req.role, req.host, left
        )
        try:
            async with asyncio.timeout(left + 5.0):  # handlers stop by the deadline themselves
                rep = await HANDLERS[req.kind](req, ctx, left)
        except Exception as exc:  # the request fails, the agent goes on
            log.exception("request %s failed", req.id)
            self._fail(req, f"{type(exc).__name__}: {exc}"[:1000])
        else:
            self.ran += 1
            self._report(rep)
        return True


class Exchanger(Protocol):
    """What :func:`serve` needs of the link."""

    @property
    def reports_waiting(self) -> int: ...

    async def exchange(self) -> None: ...


async def serve(
    link: Exchanger,
    requests: Requests,
    context: Callable[[], Context | None],
    stop: asyncio.Event,
    poll_s: float,
) -> None:
    """Until `stop`: exchange reports and requests with the controller every `poll_s` (and
    at once after each request ran: its acknowledgement goes out before it runs), and run
    what was handed over."""
    while not stop.is_set():
        for _ in range(2):  # the second: acknowledge what the first handed over
            try:
                await link.exchange()
            except LinkError as exc:
                log.warning("requests: cannot reach the controller (%s)", exc)
                break
            if not link.reports_waiting:
                break
        ctx = context()
        if ctx is not None and await requests.run_next(ctx):
            continue
        stopping = asyncio.ensure_future(stop.wait())
        woken = asyncio.ensure_future(requests.wake.wait())
        try:
            await asyncio.wait({stopping, woken}, timeout=poll_s, return_when="FIRST_COMPLETED")
        finally:
            stopping.cancel()
            woken.cancel()
