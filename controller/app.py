"""The controller's aiohttp application: a factory, typed keys, the store's lifetime.

Agent endpoints (register, results, plan) need ``Authorization: Bearer <token>``; the
reading endpoints (``/``, report, gate, metrics, healthz) need none: they are read-only
and show what the topology page shows. Put the controller behind a proxy with access
control if that is too open for a site.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from netcheck.controller.evalcache import EvaluationCache
from netcheck.controller.expand import ExpectedCheck, by_source, expand
from netcheck.controller.inventory import Inventory
from netcheck.controller.model import Evaluation
from netcheck.controller.spec import Spec
from netcheck.controller.store import Store
from netcheck.controller.writer import GroupWriter

MAX_BODY = 8 * 1024 * 1024
CHECKPOINT_SECONDS = 1.0
GC_THRESHOLD = 50_000
log = logging.getLogger("netcheck.controller")

SPEC = web.AppKey("spec", Spec)
INVENTORY = web.AppKey("inventory", Inventory)
STORE = web.AppKey("store", Store)
TOKEN = web.AppKey("token", str)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
REFRESH = web.AppKey("refresh_seconds", int)
REGISTRY = web.AppKey("registry", CollectorRegistry)
WRITER = web.AppKey("writer", GroupWriter)
# host -> the role it registered as: loaded from the store at start, updated on register,
# so authorising a batch needs no trip to the database.
AGENTS: web.AppKey[dict[str, str]] = web.AppKey("agents")
# The expected checks, expanded once at start (the inventory does not change at runtime),
# and indexed by source (role, host) for plans.
CHECKS: web.AppKey[tuple[ExpectedCheck, ...]] = web.AppKey("checks")
BY_SOURCE: web.AppKey[dict[tuple[str, str], tuple[ExpectedCheck, ...]]] = web.AppKey("by_source")
EVALUATION = web.AppKey("evaluation", EvaluationCache)


async def current_evaluation(app: web.Application) -> Evaluation:
    """The cached evaluation (recomputed in a worker thread when the store or time moved)."""
    return await asyncio.to_thread(app[EVALUATION].get)


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
    from netcheck.controller.metrics import StoreCollector
    from netcheck.controller.routes import routes

    if not token:
        raise ValueError("an empty token would let anyone report results")
    app = web.Application(client_max_size=MAX_BODY)
    app[SPEC] = spec
    app[INVENTORY] = inventory
    app[TOKEN] = token
    app[CLOCK] = clock
    app[REFRESH] = refresh_seconds
    app[REGISTRY] = CollectorRegistry(auto_describe=False)

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        checks = await asyncio.to_thread(expand, spec, inventory)
        app[CHECKS] = checks
        app[BY_SOURCE] = by_source(checks)
        store = await asyncio.to_thread(Store.open, db, background_checkpoints=True)
        app[STORE] = store
        app[EVALUATION] = EvaluationCache(spec, inventory, store, checks, clock)
        app[AGENTS] = {a.host: a.role for a in await asyncio.to_thread(store.agents)}
        writer = GroupWriter(store, clock)
        writer.start()
        app[WRITER] = writer
        collector = StoreCollector(spec, inventory, store, app[EVALUATION], clock)
        # Spec, inventory and the expanded checks live as long as the app: keep them out of
        # every garbage collection (ingest allocates thousands of objects per request).
        gc.freeze()
        # A batch allocates hundreds of objects that die with its request (each result's
        # object and fields): at the default threshold (700) the young generation was
        # collected about once per batch (py-spy: 5 % of the samples under a burst of 1,000
        # agents). Collect it every GC_THRESHOLD allocations instead.
        gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
        app[REGISTRY].register(collector)
        checkpoints = asyncio.create_task(_checkpoints(store), name="wal-checkpoints")
        try:
            yield
        finally:
            app[REGISTRY].unregister(collector)
            checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checkpoints
            await writer.close()
            await asyncio.to_thread(store.close)

    app.cleanup_ctx.append(store_ctx)
    app.add_routes(routes)
    return app
