"""The controller's aiohttp application: a factory, and one cleanup context per resource.

Agent endpoints (register, results, plan) need ``Authorization: Bearer <token>``; the
reading endpoints (``/``, report, gate, metrics, healthz) need none: they are read-only
and show what the topology page shows. Put the controller behind a proxy with access
control if that is too open for a site.

Start-up runs the contexts in order (expected checks, store, writer, evaluation and
metrics, WAL checkpoints); cleanup runs them backwards, and only those that started.
Process-wide settings (garbage collection) are not the factory's business: ``serve`` sets
them (:mod:`netcheck.controller.gctune`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from netcheck.controller.appkeys import (
    AGENTS,
    BY_SOURCE,
    CLOCK,
    EVALUATION,
    EXPECTED,
    INVENTORY,
    REFRESH,
    REGISTRY,
    SPEC,
    STORE,
    TOKEN,
    WRITER,
)
from netcheck.controller.evalcache import EvaluationCache
from netcheck.controller.expand import by_source, expected
from netcheck.controller.inventory import Inventory
from netcheck.controller.metrics import StoreCollector
from netcheck.controller.routes import MAX_BODY, routes
from netcheck.controller.spec import Spec
from netcheck.controller.store import Store
from netcheck.controller.writer import GroupWriter

CHECKPOINT_SECONDS = 1.0
log = logging.getLogger("netcheck.controller")

Context = Callable[[web.Application], AsyncIterator[None]]


async def _expected_ctx(app: web.Application) -> AsyncIterator[None]:
    """The expected checks, expanded once, and indexed by source for plans."""
    exp = await asyncio.to_thread(expected, app[SPEC], app[INVENTORY])
    app[EXPECTED] = exp
    app[BY_SOURCE] = by_source(exp.checks)
    yield


def _store_ctx(db: str | Path) -> Context:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store = await asyncio.to_thread(Store.open, db, background_checkpoints=True)
        try:
            app[STORE] = store
            app[AGENTS] = {a.host: a.role for a in await asyncio.to_thread(store.agents)}
            yield
        finally:
            await asyncio.to_thread(store.close)

    return ctx


async def _writer_ctx(app: web.Application) -> AsyncIterator[None]:
    """The store's single writer (group commit); closing it writes what is queued."""
    ids = (c.spec.check_id for c in app[EXPECTED].checks)
    writer = GroupWriter(app[STORE], app[CLOCK], expected_ids=ids)
    writer.start()
    app[WRITER] = writer
    try:
        yield
    finally:
        await writer.close()


async def _collector_ctx(app: web.Application) -> AsyncIterator[None]:
    """The shared evaluation cache, and the metrics collector that reads it at each scrape."""
    spec, inventory, store, clock = app[SPEC], app[INVENTORY], app[STORE], app[CLOCK]
    cache = EvaluationCache(spec, app[EXPECTED], store, clock)
    app[EVALUATION] = cache
    collector = StoreCollector(spec, inventory, store, cache, clock)
    app[REGISTRY].register(collector)
    try:
        yield
    finally:
        app[REGISTRY].unregister(collector)


async def _checkpoints(store: Store, every_s: float = CHECKPOINT_SECONDS) -> None:
    """Move the WAL into the database file off the commit path, after writes."""
    done = store.version
    while True:
        await asyncio.sleep(every_s)
        if store.version != done:
            done = store.version
            try:
                await asyncio.to_thread(store.checkpoint)
            except sqlite3.Error as exc:  # retried at the next tick; commits are unaffected
                log.warning("WAL checkpoint failed: %s", exc)


async def _checkpoint_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_checkpoints(app[STORE]), name="wal-checkpoints")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_app(
    spec: Spec,
    inventory: Inventory,
    db: str | Path,
    token: str,
    *,
    refresh_seconds: int = 30,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The controller app; the SQLite file ``db`` is opened at startup and closed at cleanup."""
    if not token:
        raise ValueError("an empty token would let anyone report results")
    app = web.Application(client_max_size=MAX_BODY)
    app[SPEC] = spec
    app[INVENTORY] = inventory
    app[TOKEN] = token
    app[CLOCK] = clock
    app[REFRESH] = refresh_seconds
    app[REGISTRY] = CollectorRegistry(auto_describe=False)
    app.cleanup_ctx.extend(
        [_expected_ctx, _store_ctx(db), _writer_ctx, _collector_ctx, _checkpoint_ctx]
    )
    app.add_routes(routes)
    return app
