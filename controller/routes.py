"""HTTP handlers: parse, call, serialise. The logic lives in ingest, evaluate, gate, render.

Nothing slow runs on the event loop: evaluation, gates and rendering run in a worker thread
(over the store's read-only connection), so readers never hold up ingest. ``/healthz`` is
liveness (the process answers, with the store's counts when they come quickly);
``/readyz`` is readiness (the store answers and the writer runs; 503 otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import sqlite3
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from cryptography import x509
from prometheus_client import generate_latest

from netcheck.agent.wire import Plan, encode
from netcheck.controller import authz, enrolment
from netcheck.controller.appkeys import (
    AGENTS,
    CLOCK,
    EVALUATION,
    LIVE,
    REFRESH,
    REFUSALS,
    REGISTRY,
    STORE,
    TOKEN,
    TRUST,
    WRITER,
)
from netcheck.controller.auth import bearer_matches, denied_response, source_of
from netcheck.controller.awaited import never_registered
from netcheck.controller.evalcache import Generation
from netcheck.controller.gate import GateError, decision_to_dict, gate
from netcheck.controller.ingest import (
    Refused,
    authorize_batch,
    check_batch,
    check_clock,
    parse_batch,
    parse_registration,
)
from netcheck.controller.limits import MAX_BODY
from netcheck.controller.metrics import METRICS_TEXT_SLOT, evaluation_text
from netcheck.controller.model import Evaluation
from netcheck.controller.refusals import Denied, RefusedRegistration
from netcheck.controller.reload import ConfigStatus
from netcheck.controller.render.page_data import (
    FAILURES_SHOWN,
    failure_runs,
    failures_page,
    interaction_details,
    page_summary,
    role_details,
)
from netcheck.controller.render.page_rows import PageRow
from netcheck.controller.requests import BOOK, encode_requests
from netcheck.controller.store import sent
from netcheck.controller.trust import Trust, peer_identity
from netcheck.controller.writer import Unstorable

__all__ = ["MAX_BODY", "routes"]
# /healthz waits at most this long for the store's counts (then answers without them).
HEALTH_STATS_SECONDS = 1.0
GZIP_LEVEL = 1  # a 70 MB report in ~0.2 s, to ~2 MB
log = logging.getLogger("netcheck.controller")
# generate_latest() writes the classic text format (0.0.4); say so, whatever the client
# library's newest default is, so every Prometheus version parses it the same way.
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
routes = web.RouteTableDef()
T = TypeVar("T")


async def current_evaluation(app: web.Application) -> Evaluation:
    """The cached evaluation (recomputed in a worker thread when the store or time moved)."""
    return await asyncio.to_thread(app[EVALUATION].get)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _refuse(request: web.Request, exc: Refused) -> web.Response:
    try:
        await request.app[WRITER].count_rejected(exc.reason)
    except Exception as err:  # the refusal stands even when it cannot be counted
        log.error("could not count a refusal (%s): %s", exc.reason, err)
    log.info("refused %s %s: %s %s", request.method, request.path, exc.status, exc.message)
    return _error(exc.status, exc.message)


def _sender(request: web.Request) -> authz.Sender:
    """Who sent an agent request (its client certificate, or the shared token), or Denied.

    Denied is answered by the auth middleware, counted in memory: no database write.
    """
    app = request.app
    trust = app.get(TRUST)
    if trust is not None:
        return trust.sender(request, app[LIVE].current.inventory)
    if not bearer_matches(request, app[TOKEN]):
        raise Denied(401, "auth", "missing or wrong bearer token")
    return authz.SHARED_TOKEN


async def _body(request: web.Request) -> bytes:
    """The body, or Refused(413) when too large (the sender is known: see _sender)."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Refused(413, "size", f"body larger than {MAX_BODY} bytes") from None


@routes.post("/api/v1/register")
async def register(request: web.Request) -> web.Response:
    """The agent's plan (with its ``plan_digest``), from the configuration that validated it."""
    app = request.app
    sender = _sender(request)
    try:
        body = await _body(request)
        site = app[LIVE].current
        reg = parse_registration(body, site.spec, site.inventory)
    except Refused as exc:
        return await _refuse(request, exc)
    scope = site.scopes.get((reg.role, reg.host))
    try:
        authz.authorize_registration(reg, sender, scope)
    except Denied as denied:
        if denied.reason == "address" and scope is not None:
            refused = RefusedRegistration(
                app[CLOCK](), reg.role, reg.host, reg.address, scope.address, sender.label
            )
            app[REFUSALS].registration(refused)
        raise
    # Its results started before now are an older plan's (set before the store's write, so
    # the evaluation of that write sees it).
    app[LIVE].plan_fetched[reg.host] = app[CLOCK]()
    await asyncio.to_thread(app[STORE].register, reg, app[CLOCK]())
    app[AGENTS][reg.host] = reg.role
    plan: Plan | None = site.plan(reg.role, reg.host)
    assert plan is not None  # parse_registration found the host in this configuration
    log.info("registered %s %s from %s", reg.role, reg.host, reg.address)
    return web.json_response(encode(plan))


@routes.post("/api/v1/results")
async def results(request: web.Request) -> web.Response:
    app = request.app
    sender = _sender(request)
    try:
        body = await _body(request)
        batch = parse_batch(body)
        site = app[LIVE].current
        authz.authorize_batch(batch, sender, site.scopes.get((batch.role, batch.host)))
        authorize_batch(batch, app[AGENTS].get(batch.host))
        check_batch(batch, site.spec, site.inventory)
        check_clock(batch, app[CLOCK]())
    except Refused as exc:
        return await _refuse(request, exc)
    # Answered once the group transaction holding this batch committed: acknowledged =
    # committed. A batch that cannot be stored fails alone (the writer retries its group
    # without it): 400 when its data is the cause (do not send it again), else 500.
    try:
        accepted = await app[WRITER].ingest(sent(batch, sender.label))
    except Unstorable as exc:
        return await _refuse(request, Refused(400, "schema", f"the batch cannot be stored: {exc}"))
    except Exception:
        return _error(500, "the batch was not stored (database error); send it again")
    # The answer is a fixed shape (agent.wire.ResultsAck): no JSON encoder per request. Its
    # digest is of the sender's plan in the configuration running now: a stale one shows.
    digest = app[LIVE].current.digest_of(batch.role, batch.host).encode()
    answer = b'{"accepted": %d, "plan_digest": "%s"}' % (accepted, digest)
    pending = app[BOOK].pending(batch.role, batch.host) if BOOK in app else ()
    if pending:  # the request channel (controller.requests): this agent's pending requests
        return web.json_response(
            {
                "accepted": accepted,
                "plan_digest": digest.decode(),
                "requests": encode_requests(pending),
            }
        )
    return web.Response(body=answer, content_type="application/json")


@routes.get("/api/v1/plan")
async def plan(request: web.Request) -> web.Response:
    app = request.app
    sender = _sender(request)
    role, host = request.query.get("role", ""), request.query.get("host", "")
    authz.authorize_plan(role, host, sender)
    found = app[LIVE].current.plan(role, host)
    if found is None:
        return _error(404, f"no {role!r} host named {host!r} in the inventory")
    return web.json_response(encode(found))


@dataclass(frozen=True)
class Rendered:
    """A rendered document, as sent: UTF-8 bytes, and gzip-compressed (level 1)."""

    body: bytes
    gzipped: bytes


def _rendered(text: str) -> Rendered:
    body = text.encode()
    return Rendered(body, gzip.compress(body, GZIP_LEVEL, mtime=0))


def _send(request: web.Request, doc: Rendered, content_type: str) -> web.Response:
    """The document, gzip-compressed when the client accepts it (a page of a big site is
    tens of megabytes; compressed once per evaluation, not per request)."""
    resp = web.Response(content_type=content_type, charset="utf-8")
    resp.headers["Vary"] = "Accept-Encoding"
    if "gzip" in request.headers.get("Accept-Encoding", "").lower():
        resp.body = doc.gzipped
        resp.headers["Content-Encoding"] = "gzip"
    else:
        resp.body = doc.body
    return resp


async def _derived(app: web.Application, slot: Hashable, make: Callable[[Generation], T]) -> T:
    """A rendered document: a lookup on the event loop when it is ready (no thread hop, so a
    reader is not queued behind a burst of batches), else rendered in a worker thread."""
    cache = app[EVALUATION]
    doc = cache.ready(slot, make)
    return doc if doc is not None else await asyncio.to_thread(cache.derived, slot, make)


def report_maker(
    app: web.Application,
    fmt: str,
    refused: tuple[RefusedRegistration, ...],
    config: ConfigStatus | None = None,
) -> Callable[[Generation], Rendered]:
    """The rendered report in ``fmt`` of a generation (JSON: with ``refused`` and the
    running configuration's ``config`` status)."""
    from netcheck.controller import exposure
    from netcheck.controller.render import json_report, render_report

    gates_of = app[EVALUATION].gates_of()
    status = config.to_dict() if config is not None else None
    audit = exposure.current(app[BOOK], app[LIVE].current.by_source) if BOOK in app else None

    def make(g: Generation) -> Rendered:
        gates = g.derive(("gates",), gates_of)
        if fmt == "json":  # with the registrations refused for their address
            text = json_report.render(
                g.spec,
                g.ev,
                gates,
                refused_registrations=refused,
                compact=True,
                config=status,
                exposure=exposure.to_dict(audit) if audit is not None else None,
            )
            return _rendered(text)
        text = render_report(g.spec, g.ev, gates, fmt, g.inventory)
        if fmt == "markdown" and audit is not None:
            text = exposure.with_markdown(text, audit)
        return _rendered(text)

    return make


@routes.get("/api/v1/report")
async def report(request: web.Request) -> web.Response:
    from netcheck.controller.render import FORMATS, MEDIA_TYPES

    fmt = request.query.get("format", "json")
    if fmt not in MEDIA_TYPES:
        return _error(400, f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")
    doc = await _derived(request.app, *report_slot(request.app, fmt))
    return _send(request, doc, MEDIA_TYPES[fmt])


def report_slot(
    app: web.Application, fmt: str
) -> tuple[Hashable, Callable[[Generation], Rendered]]:
    """The evaluation-cache slot of the report in ``fmt`` as of now, and its maker: rendered
    once per evaluation (and, for JSON, per list of refused registrations and configuration
    status: a refused reload shows without a new evaluation), and per version of the request
    book (the exposure audit). The same slot for :func:`prime` and for readers, so the report
    the background derives is the one a reader asks for (a different key rendered it twice)."""
    refused = tuple(app[REFUSALS].snapshot()[1]) if fmt == "json" else ()
    config = app[LIVE].status
    book = app[BOOK].version if BOOK in app else 0
    slot = ("report", fmt, refused, config, book) if fmt == "json" else ("report", fmt, book)
    return slot, report_maker(app, fmt, refused, config)


@routes.get("/api/v1/history")
async def history_endpoint(request: web.Request) -> web.Response:
    """A check's or an interaction's changes and outages (:mod:`controller.history_api`)."""
    from netcheck.controller import history_api

    try:
        q = history_api.parse(request.query, [k for k, _ in request.query.items()])
    except history_api.BadQuery as exc:
        return _error(400, str(exc))
    store = request.app[STORE]

    def work() -> dict[str, Any] | None:
        if not store.history_knows(q):
            return None
        return history_api.answer(*store.history_of(q))

    body = await asyncio.to_thread(work)
    if body is None:
        what = f"check {q.check!r}" if q.check is not None else f"interaction {q.interaction}"
        return _error(400, f"no {what}: neither expected at this site nor in history")
    return web.json_response(body)


@routes.get("/api/v1/gate")
async def gate_endpoint(request: web.Request) -> web.Response:
    mode = request.query.get("mode", "")
    vm = request.query.get("vm") or None
    app = request.app

    # Fresh: a migration starts on this answer, so it includes every result acknowledged
    # before it was asked (the page and reports may show the previous generation meanwhile).
    def work() -> dict[str, Any]:  # with the identity that sent each result
        g = app[EVALUATION].generation(fresh=True)  # judged against the running site
        if vm is None and mode in g.spec.modes:  # cached with the evaluation
            gates = g.derive(("gates",), app[EVALUATION].gates_of())
            return decision_to_dict(gates[list(g.spec.modes).index(mode)], g.ev)
        inventory = g.inventory or app[LIVE].current.inventory
        return decision_to_dict(gate(g.spec, inventory, g.ev, mode, vm), g.ev)

    try:
        answer = await asyncio.to_thread(work)
    except GateError as exc:
        return _error(400, str(exc))
    return web.json_response(answer)


def _page_runs(g: Generation) -> list[PageRow]:
    """The failing runs the page's table lists, once per generation."""
    return g.derive(("page-runs",), lambda g: failure_runs(g.ev))


def _page_extra(g: Generation, config: ConfigStatus | None) -> dict[str, Any]:
    """The page's blocks besides the evaluation: the configuration's status (a refused
    reload) and the expected agents that never registered."""
    return {
        "config": config.to_dict() if config is not None else None,
        "never_registered": [
            {"role": a.role, "host": a.host, "address": a.address}
            for a in never_registered(g.spec, g.ev)
        ],
    }


def page_maker(
    app: web.Application, config: ConfigStatus | None = None
) -> Callable[[Generation], Rendered]:
    """The rendered page of a generation (with its gates, and the configuration's status)."""
    from netcheck.controller.render import render_page

    refresh = app[REFRESH] or None
    gates_of = app[EVALUATION].gates_of()

    def make(g: Generation) -> Rendered:
        gates = g.derive(("gates",), gates_of)
        runs, extra = _page_runs(g), _page_extra(g, config)
        return _rendered(
            render_page(
                g.spec,
                g.ev,
                gates,
                refresh_seconds=refresh,
                runs=runs,
                extra=extra,
                inventory=g.inventory,
            )
        )

    return make


def page_data_maker(
    app: web.Application, config: ConfigStatus | None = None
) -> Callable[[Generation], Rendered]:
    """What the page's script polls (render.page_data.page_summary), as JSON."""
    gates_of = app[EVALUATION].gates_of()

    def make(g: Generation) -> Rendered:
        gates = g.derive(("gates",), gates_of)
        extra = _page_extra(g, config)
        data = page_summary(g.spec, g.ev, gates, _page_runs(g), extra, g.inventory)
        return _rendered(json.dumps(data, separators=(",", ":")))

    return make


@routes.get("/")
async def page(request: web.Request) -> web.Response:
    app = request.app
    config = app[LIVE].status
    doc = await _derived(app, ("page", config), page_maker(app, config))
    return _send(request, doc, "text/html")


@routes.get("/api/v1/page")
async def page_data(request: web.Request) -> web.Response:
    """The page's data: gates, roll-ups, the first failing runs (small on any site)."""
    app = request.app
    config = app[LIVE].status
    doc = await _derived(app, ("page-data", config), page_data_maker(app, config))
    return _send(request, doc, "application/json")


def _query_int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name, "")
    if not text:
        return default
    if not text.isdigit() or len(text) > 9:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{name} must be a whole number, got {text[:40]!r}"}),
            content_type="application/json",
        )
    return int(text)


@routes.get("/api/v1/page/failures")
async def page_failures(request: web.Request) -> web.Response:
    """A page of the failing runs (``offset``, ``limit`` up to page_data.MAX_PAGE)."""
    app = request.app
    offset = _query_int(request, "offset", 0)
    limit = _query_int(request, "limit", FAILURES_SHOWN)

    def work() -> dict[str, Any]:
        _, runs = app[EVALUATION].derived_with(("page-runs",), lambda g: failure_runs(g.ev))
        return failures_page(runs, offset, limit)

    return web.json_response(await asyncio.to_thread(work))


_NO_DETAILS = Rendered(b"", b"")  # the generation's topology has no such interaction or role


def _details_maker(kind: str, key: str | int) -> Callable[[Generation], Rendered]:
    def make(g: Generation) -> Rendered:
        if kind == "interaction":
            doc = interaction_details(g.spec, g.ev, int(key))
        else:
            doc = role_details(g.spec, g.ev, str(key), g.inventory)
        return _NO_DETAILS if doc is None else _rendered(json.dumps(doc, separators=(",", ":")))

    return make


async def _details(request: web.Request, kind: str, key: str | int) -> web.Response:
    doc = await _derived(request.app, ("page-details", kind, key), _details_maker(kind, key))
    if doc is _NO_DETAILS:
        return _error(404, f"no {kind} {key!r} in the running topology")
    return _send(request, doc, "application/json")


@routes.get("/api/v1/page/interaction/{id}")
async def page_interaction(request: web.Request) -> web.Response:
    """One interaction's details: per port range, its counts and failing runs (bounded)."""
    text = request.match_info["id"]
    known = {str(i.id) for i in request.app[LIVE].current.spec.interactions}
    if text not in known:  # bounded slots: only the topology's interactions
        return _error(404, f"no interaction {text[:40]!r} in the running topology")
    return await _details(request, "interaction", int(text))


@routes.get("/api/v1/page/role/{role}")
async def page_role(request: web.Request) -> web.Response:
    """One role's details: its hosts, listeners, ports and failing runs (bounded)."""
    key = request.match_info["role"]
    if key not in request.app[LIVE].current.spec.roles:
        return _error(404, f"no role {key[:40]!r} in the running topology")
    return await _details(request, "role", key)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """The evaluation's families as written once per evaluation, then what changes between
    evaluations (agents' ages, counters, refusals, the configuration), gzip-compressed when
    the scraper accepts it (Prometheus does)."""
    app = request.app
    evaluated = await _derived(app, METRICS_TEXT_SLOT, evaluation_text(app[EVALUATION]))
    # The rest is small (metrics.StoreCollector): on the event loop, no thread hop.
    text = evaluated + generate_latest(app[REGISTRY])
    zipped = "gzip" in request.headers.get("Accept-Encoding", "").lower()
    resp = web.Response(body=gzip.compress(text, GZIP_LEVEL, mtime=0) if zipped else text)
    resp.headers["Content-Type"] = METRICS_TYPE
    resp.headers["Vary"] = "Accept-Encoding"
    if zipped:
        resp.headers["Content-Encoding"] = "gzip"
    return resp


def prime(app: web.Application) -> None:
    """Compute the first evaluation in the background, with the page, the JSON report (what
    the page's script fetches) and the metrics families already derived."""
    config = app[LIVE].status
    app[EVALUATION].prime(
        (("page", config), page_maker(app, config)),
        (("page-data", config), page_data_maker(app, config)),
        report_slot(app, "json"),
        (METRICS_TEXT_SLOT, evaluation_text(app[EVALUATION])),
    )


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness: answered by the event loop, with the store's counts if they come quickly."""
    stats: dict[str, Any] = {}
    with contextlib.suppress(TimeoutError, sqlite3.Error):
        stats = await asyncio.wait_for(
            asyncio.to_thread(request.app[STORE].stats), HEALTH_STATS_SECONDS
        )
    return web.Response(text=json.dumps({"status": "ok", **stats}), content_type="application/json")


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Readiness: the store answers a read and the writer runs (503 with the reason if not)."""
    app = request.app
    problem = ""
    if STORE not in app or WRITER not in app or not app[WRITER].running:
        problem = "the store writer is not running"
    else:
        try:
            await asyncio.wait_for(asyncio.to_thread(app[STORE].ping), HEALTH_STATS_SECONDS * 5)
        except (TimeoutError, sqlite3.Error) as exc:
            problem = f"the store does not answer: {exc or 'timeout'}"
    if problem:
        return web.json_response({"status": "not ready", "reason": problem}, status=503)
    return web.json_response({"status": "ready"})


def _enrolment_answer(trust: Trust, cert: bytes, key: bytes | None) -> web.Response:
    x509_cert = x509.load_pem_x509_certificate(cert)
    body: dict[str, Any] = {
        "certificate": cert.decode(),
        "ca": trust.ca_pem(),
        "not_after": int(x509_cert.not_valid_after_utc.timestamp()),
    }
    if key is not None:
        body["key"] = key.decode()
    return web.json_response(body)


def _trust(request: web.Request) -> Trust:
    trust = request.app.get(TRUST)
    if trust is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": "enrolment needs a controller started with --pki"}),
            content_type="application/json",
        )
    return trust


async def _enrol_refused(request: web.Request, exc: enrolment.EnrolError) -> web.Response:
    answer = request.app[REFUSALS].refuse(
        source_of(request), Denied(exc.status, "enrol", exc.detail), "POST " + request.path
    )
    if answer.status == 429:
        return denied_response(answer)
    return web.json_response(exc.body(), status=exc.status)


def _busy(why: str) -> web.Response:
    """503 with Retry-After: the database could not take the write now; nothing was used."""
    resp = _error(503, f"the controller's database is busy ({why}); try again")
    resp.headers["Retry-After"] = "1"
    return resp


@routes.post("/api/v1/enrol")
async def enrol(request: web.Request) -> web.Response:
    """A join token and a CSR (no client certificate needed) -> a client certificate."""
    trust, inv = _trust(request), request.app[LIVE].current.inventory
    now = request.app[CLOCK]()
    try:
        req = enrolment.parse_enrol_request(await request.read())
        args = (trust.joins, trust.ca, inv.has, req.token)
        kw: dict[str, Any] = {"host": req.host, "role": req.role, "issued": trust.issued}
        if req.csr is None:
            key, cert = await asyncio.to_thread(enrolment.enrol_new_key, *args, now, **kw)
            return _enrolment_answer(trust, cert, key)
        cert = await asyncio.to_thread(enrolment.enrol, *args, req.csr, now, **kw)
    except enrolment.EnrolError as exc:
        return await _enrol_refused(request, exc)
    except sqlite3.OperationalError as exc:  # the ledger was busy: nothing used, try again
        log.warning("enrolment of %s not done: %s", req.host, exc)
        return _busy(str(exc))
    log.info("enrolled %s %s", req.role or "", req.host)
    return _enrolment_answer(trust, cert, None)


@routes.post("/api/v1/renew")
async def renew(request: web.Request) -> web.Response:
    """The current client certificate and a CSR -> a new certificate, same identity."""
    trust, inv = _trust(request), request.app[LIVE].current.inventory
    _sender(request)  # a valid, unrevoked certificate of an inventory host, or Denied
    now = request.app[CLOCK]()
    try:
        csr = enrolment.parse_renew_request(await request.read())
        args = (trust.ca, peer_identity(request), inv.has, trust.revoked)
        if csr is None:
            key, cert = await asyncio.to_thread(
                enrolment.renew_new_key, *args, now, issued=trust.issued
            )
            return _enrolment_answer(trust, cert, key)
        cert = await asyncio.to_thread(enrolment.renew, *args, csr, now, issued=trust.issued)
    except enrolment.EnrolError as exc:
        return await _enrol_refused(request, exc)
    except sqlite3.OperationalError as exc:  # the ledger was busy: try again
        log.warning("renewal not done: %s", exc)
        return _busy(str(exc))
    return _enrolment_answer(trust, cert, None)
