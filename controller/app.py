"""The controller's aiohttp application: a factory, typed keys, the store's lifetime.

Agent endpoints (register, results, plan) need ``Authorization: Bearer <token>``; the
reading endpoints (``/``, report, gate, metrics, healthz) need none: they are read-only
and show what the topology page shows. Put the controller behind a proxy with access
control if that is too open for a site.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from controller.evaluate import evaluate
from controller.inventory import Inventory
from controller.model import Evaluation
from controller.spec import Spec
from controller.store import Store
from controller.writer import GroupWriter

MAX_BODY = 8 * 1024 * 1024

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


def evaluate_store(spec: Spec, inventory: Inventory, store: Store, now: float) -> Evaluation:
    """Read everything from the store and judge it (blocking: run it in a thread)."""
    return evaluate(
        spec, inventory, store.results(), store.listeners(), store.peers(), store.agents(), now
    )


async def current_evaluation(app: web.Application) -> Evaluation:
    spec, inv, store = app[SPEC], app[INVENTORY], app[STORE]
    return await asyncio.to_thread(evaluate_store, spec, inv, store, app[CLOCK]())


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
    from controller.metrics import StoreCollector
    from controller.routes import routes

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
        store = await asyncio.to_thread(Store.open, db)
        app[STORE] = store
        app[AGENTS] = {a.host: a.role for a in await asyncio.to_thread(store.agents)}
        writer = GroupWriter(store, clock)
        writer.start()
        app[WRITER] = writer
        collector = StoreCollector(spec, inventory, store, clock)
        app[REGISTRY].register(collector)
        try:
            yield
        finally:
            app[REGISTRY].unregister(collector)
            await writer.close()
            await asyncio.to_thread(store.close)

    app.cleanup_ctx.append(store_ctx)
    app.add_routes(routes)
    return app
