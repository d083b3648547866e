"""The controller's aiohttp application: a factory, and one cleanup context per resource.

Two ways to know the agents (one of them is required):

- ``pki`` (a CA directory, ``netcheck-controller ca init``): serve it over HTTPS with
  :func:`~netcheck.controller.pki.server_context_for` (client certificates optional at the
  TLS layer, so enrolment and mutual TLS share one port). Agents enrol with a join token
  (``POST /api/v1/enrol``), then every agent request is identified by its verified client
  certificate and authorised per host (:mod:`~netcheck.controller.authz`).
- ``token`` (``--insecure-http``, labs and tests): the shared bearer token, as before; every
  holder is trusted as any host.

Reads (``/``, report, gate, metrics) need ``read_token`` (bearer, or basic auth with the
token as password) unless it is None (``--open-reads``); ``/healthz`` stays open
(:mod:`~netcheck.controller.auth`). Refusals are counted in memory and limited per source
(:mod:`~netcheck.controller.refusals`): they write nothing.

Start-up runs the contexts in order (the configuration and its expected checks, store,
writer, evaluation and metrics, reloads, WAL checkpoints); cleanup runs them backwards, and
only those that started.

Reloads (:mod:`~netcheck.controller.reload`): with ``reload_signal`` SIGHUP reloads
topology.yaml, its matrix and the inventory; with ``watch_seconds`` > 0 the files are polled
that often and reloaded when their content changes. A new configuration is given to the
store (its expected ids) and the evaluation cache, then served (``app[LIVE].current``); a
bad edit changes nothing and is shown (log, ``netcheck_config_*`` metrics, the report's
``config`` block).
Process-wide settings (garbage collection) are not the factory's business: ``serve`` sets
them (:mod:`netcheck.controller.gctune`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from netcheck.controller.appkeys import (
    AGENTS,
    CLOCK,
    EVALUATION,
    INVENTORY,
    LIVE,
    REFRESH,
    REFUSALS,
    REGISTRY,
    SPEC,
    STORE,
    TOKEN,
    TRUST,
    WRITER,
)
from netcheck.controller.auth import guard
from netcheck.controller.evalcache import EvaluationCache
from netcheck.controller.inventory import Inventory
from netcheck.controller.metrics import RefusalCollector, StoreCollector
from netcheck.controller.qualify_schedule import schedule_ctx
from netcheck.controller.refusals import Refusals
from netcheck.controller.reload import (
    ConfigCollector,
    LiveConfig,
    SiteConfig,
    input_files,
    stamp,
    watch,
)
from netcheck.controller.requests import OPERATOR_WRITES, book_ctx, request_routes
from netcheck.controller.routes import MAX_BODY, prime, routes
from netcheck.controller.spec import Spec
from netcheck.controller.store import Store
from netcheck.controller.trust import Trust
from netcheck.controller.writer import GroupWriter

CHECKPOINT_SECONDS = 1.0
log = logging.getLogger("netcheck.controller")

Context = Callable[[web.Application], AsyncIterator[None]]


def _site(spec: Spec, inventory: Inventory, now: float) -> SiteConfig:
    """The starting configuration, expanded, with its files' stamps (what reloads compare
    with; files that cannot be read, e.g. a spec built in memory, are left out)."""
    paths = input_files(spec.file, inventory.file)
    stamps = tuple(s for s in (stamp(p) for p in paths) if s is not None)
    return SiteConfig.build(spec, inventory, stamps, now)


async def _config_ctx(app: web.Application) -> AsyncIterator[None]:
    """The running configuration: expanded once, and indexed by source for plans."""
    site = await asyncio.to_thread(_site, app[SPEC], app[INVENTORY], app[CLOCK]())
    app[LIVE] = LiveConfig(site, app[CLOCK])
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


def _trust_ctx(pki: str | Path, db: str | Path) -> Context:
    """The CA and the enrolment ledger (after the store made or migrated the file)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        trust = await asyncio.to_thread(Trust.open, pki, db, app[CLOCK])
        app[TRUST] = trust
        try:
            yield
        finally:
            await asyncio.to_thread(trust.close)

    return ctx


async def _writer_ctx(app: web.Application) -> AsyncIterator[None]:
    """The store's single writer (group commit); closing it writes what is queued."""
    # The expected checks themselves: the store bounds the others and records history.
    writer = GroupWriter(app[STORE], app[CLOCK], expected=app[LIVE].current.expected.checks)
    writer.start()
    app[WRITER] = writer
    try:
        yield
    finally:
        await writer.close()


async def _collector_ctx(app: web.Application) -> AsyncIterator[None]:
    """The shared evaluation cache, and the metrics collectors that read it (and the running
    configuration) at each scrape."""
    site, store, clock = app[LIVE].current, app[STORE], app[CLOCK]
    cache = EvaluationCache(
        site.spec,
        site.expected,
        store,
        clock,
        inventory=site.inventory,
        plan_fetched=app[LIVE].plan_fetched,
    )
    app[EVALUATION] = cache
    collector = StoreCollector(store, cache, clock)
    app[REGISTRY].register(collector)
    refused = RefusalCollector(app[REFUSALS])
    app[REGISTRY].register(refused)
    config = ConfigCollector(app[LIVE])
    app[REGISTRY].register(config)
    prime(app)  # the first evaluation, in the background: the first reader need not wait
    try:
        yield
    finally:
        app[REGISTRY].unregister(config)
        app[REGISTRY].unregister(refused)
        app[REGISTRY].unregister(collector)


def _reload_ctx(signal_: bool, watch_seconds: float) -> Context:
    """Reloads of the configuration: given to the store and the evaluation cache; on SIGHUP
    (`signal_`) and, every `watch_seconds` (> 0), when the files changed."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        live, store, cache = app[LIVE], app[STORE], app[EVALUATION]

        async def to_store(site: SiteConfig, retired: frozenset[str]) -> None:
            await asyncio.to_thread(store.expect, site.expected.checks)

        async def to_cache(site: SiteConfig, retired: frozenset[str]) -> None:
            cache.use(site.spec, site.inventory, site.expected, site.generation, retired)

        live.on_reload(to_store)
        live.on_reload(to_cache)
        tasks: set[asyncio.Task[bool | None]] = set()
        loop = asyncio.get_running_loop()

        def on_hup() -> None:
            task = loop.create_task(live.reload("SIGHUP"), name="config-reload")
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        if signal_:
            loop.add_signal_handler(signal.SIGHUP, on_hup)
        watcher = (
            loop.create_task(watch(live, watch_seconds), name="config-watch")
            if watch_seconds > 0
            else None
        )
        try:
            yield
        finally:
            if signal_:
                loop.remove_signal_handler(signal.SIGHUP)
            for task in [*tasks, *([watcher] if watcher is not None else [])]:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return ctx


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
    token: str | None = None,
    *,
    pki: str | Path | None = None,
    read_token: str | None = None,
    open_reads: bool = True,
    refresh_seconds: int = 30,
    clock: Callable[[], float] = time.time,
    refusals: Refusals | None = None,
    reload_signal: bool = False,
    watch_seconds: float = 0.0,
) -> web.Application:
    """The controller app; the SQLite file ``db`` is opened at startup and closed at cleanup.

    Exactly one of ``token`` (the shared agent token, insecure) and ``pki`` (the CA
    directory). Reads need ``read_token`` when one is given; without one, ``open_reads``
    must say that they are open. ``reload_signal``: SIGHUP reloads the configuration
    (installs a signal handler: serving processes only); ``watch_seconds`` > 0: so does a
    change of its files, polled that often.
    """
    if (token is None) == (pki is None):
        raise ValueError("give exactly one of token (insecure HTTP) and pki (a CA directory)")
    if token is not None and not token:
        raise ValueError("an empty token would let anyone report results")
    if read_token is not None and not read_token:
        raise ValueError("an empty read token would let anyone read")
    if read_token is None and not open_reads:
        raise ValueError("reads need a read token, or open_reads")
    refusals = refusals if refusals is not None else Refusals()
    app = web.Application(client_max_size=MAX_BODY, middlewares=[guard(refusals, read_token)])
    app[SPEC] = spec
    app[INVENTORY] = inventory
    app[TOKEN] = token or ""
    app[REFUSALS] = refusals
    app[CLOCK] = clock
    app[REFRESH] = refresh_seconds
    app[REGISTRY] = CollectorRegistry(auto_describe=False)
    trust = [_trust_ctx(pki, db)] if pki is not None else []
    app.cleanup_ctx.extend(
        [
            _config_ctx,
            _store_ctx(db),
            *trust,
            book_ctx(db),
            schedule_ctx(),
            _writer_ctx,
            _collector_ctx,
            _reload_ctx(reload_signal, watch_seconds),
            _checkpoint_ctx,
        ]
    )
    app.add_routes(routes)
    app.add_routes(request_routes)
    # Requests (an exposure sweep, ...) may be created over HTTP only behind the read token.
    app[OPERATOR_WRITES] = read_token is not None
    return app
