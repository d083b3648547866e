"""The interconnect qualification's schedule: requests the controller makes by itself.

topology.yaml ``qualification:`` sets how often the agents measure their data paths
(``every_seconds``: MTU and round trip; 0: never) and how often with throughput
(``throughput_every_seconds``: 0, the default, never: it loads a production link; an operator
asks for it with ``netcheck-controller request interconnect --throughput``). Every tick, each
agent host whose plan has paths and whose newest interconnect request (any state) is older
than the period gets one request (kind ``interconnect``, throughput 1 when that period is
due too). :func:`due` is the pure part; :func:`schedule_ctx` runs it in the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping

from aiohttp import web

from netcheck.agent.wire import AgentRequest, RequestParam
from netcheck.controller.appkeys import CLOCK, LIVE
from netcheck.controller.interconnect import Qualification
from netcheck.controller.requests import BOOK, RequestBook, new_id

log = logging.getLogger("netcheck.controller")
TICK_SECONDS = 30.0
# An agent gets this long to measure (its paths one after the other).
DEADLINE_SECONDS = 900.0


def due(
    q: Qualification,
    agents: Iterable[tuple[str, str]],
    last: Mapping[tuple[str, ...], tuple[float, bool]],
    now: float,
) -> list[AgentRequest]:
    """One interconnect request per agent (role, host) whose last one (created at, with
    throughput) is older than ``every_seconds``; with throughput when the last one that had
    it is older than ``throughput_every_seconds``. Nothing when ``every_seconds`` is 0."""
    if q.every_seconds <= 0:
        return []
    out = []
    for role, host in agents:
        at, _ = last.get((role, host), (float("-inf"), False))
        if now - at < q.every_seconds:
            continue
        tp_at = last.get((role, host, "throughput"), (float("-inf"), True))[0]
        with_tp = q.throughput_every_seconds > 0 and now - tp_at >= q.throughput_every_seconds
        params = (RequestParam("throughput", 1.0 if with_tp else 0.0),)
        out.append(
            AgentRequest(new_id(), "interconnect", role, host, now + DEADLINE_SECONDS, params, now)
        )
    return out


def _last(book: RequestBook) -> dict[tuple[str, ...], tuple[float, bool]]:
    """(role, host) -> (created_at, throughput) of its newest interconnect request, and
    (role, host, "throughput") -> the newest one with throughput."""
    out: dict[tuple[str, ...], tuple[float, bool]] = {}
    for r in book.all():
        req = r.request
        if req.kind != "interconnect":
            continue
        tp = any(p.name == "throughput" and p.value == 1.0 for p in req.params)
        key = (req.role, req.host)
        if key not in out or out[key][0] < req.created_at:
            out[key] = (req.created_at, tp)
        if tp:
            tkey = (req.role, req.host, "throughput")
            if tkey not in out or out[tkey][0] < req.created_at:
                out[tkey] = (req.created_at, True)
    return out


def tick(app: web.Application) -> int:
    """Make the requests that are due; how many (blocking: reads and writes the book)."""
    site = app[LIVE].current
    book = app[BOOK]
    q = site.spec.qualification
    made = due(q, list(site.qualifying), _last(book), app[CLOCK]())
    if made:
        book.add(made, "schedule")
        log.info("qualification: %d interconnect request(s) made", len(made))
    return len(made)


Context = Callable[[web.Application], AsyncIterator[None]]


def schedule_ctx(every_s: float = TICK_SECONDS) -> Context:
    """The app's schedule task (after the request book's context)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every_s)
                try:
                    await asyncio.to_thread(tick, app)
                except Exception:  # the next tick tries again
                    log.exception("qualification schedule failed")

        task = asyncio.create_task(loop(), name="qualification-schedule")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ctx
