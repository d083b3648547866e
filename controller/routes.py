"""HTTP handlers: parse, call, serialise. The logic lives in ingest, evaluate, gate, render."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest

from netcheck.agent.wire import Plan, encode
from netcheck.controller.appkeys import (
    AGENTS,
    BY_SOURCE,
    CLOCK,
    EVALUATION,
    INVENTORY,
    REFRESH,
    REGISTRY,
    SPEC,
    STORE,
    TOKEN,
    WRITER,
)
from netcheck.controller.expand import plan_from_checks
from netcheck.controller.gate import GateError, decision_to_dict, gate
from netcheck.controller.ingest import (
    Refused,
    authorize_batch,
    check_batch,
    parse_batch,
    parse_registration,
)
from netcheck.controller.model import Evaluation, GateDecision

MAX_BODY = 8 * 1024 * 1024  # the app's client_max_size
log = logging.getLogger("netcheck.controller")
# generate_latest() writes the classic text format (0.0.4); say so, whatever the client
# library's newest default is, so every Prometheus version parses it the same way.
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
routes = web.RouteTableDef()


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


def _authorized(request: web.Request) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    expected = request.app[TOKEN]
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), expected.encode()
    )


async def _body(request: web.Request) -> bytes:
    """The body, or Refused(401) without a good token, Refused(413) when too large."""
    if not _authorized(request):
        raise Refused(401, "auth", "missing or wrong bearer token")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Refused(413, "size", f"body larger than {MAX_BODY} bytes") from None


def _plan(app: web.Application, role: str, host: str, address: str) -> Plan:
    checks = app[BY_SOURCE].get((role, host), ())
    return plan_from_checks(app[SPEC], role, host, address, checks)


@routes.post("/api/v1/register")
async def register(request: web.Request) -> web.Response:
    app = request.app
    try:
        body = await _body(request)
        reg = parse_registration(body, app[SPEC], app[INVENTORY])
    except Refused as exc:
        return await _refuse(request, exc)
    await asyncio.to_thread(app[STORE].register, reg, app[CLOCK]())
    app[AGENTS][reg.host] = reg.role
    host = next(h for h in app[INVENTORY].of_role(reg.role) if h.name == reg.host)
    plan = _plan(app, reg.role, reg.host, host.address)
    log.info("registered %s %s from %s", reg.role, reg.host, reg.address)
    return web.json_response(encode(plan))


@routes.post("/api/v1/results")
async def results(request: web.Request) -> web.Response:
    app = request.app
    try:
        body = await _body(request)
        batch = parse_batch(body)
        authorize_batch(batch, app[AGENTS].get(batch.host))
        check_batch(batch, app[SPEC], app[INVENTORY])
    except Refused as exc:
        return await _refuse(request, exc)
    # Answered once the group transaction holding this batch committed: acknowledged =
    # committed. A failed group keeps nothing; the agent keeps the batch and sends it again.
    try:
        accepted = await app[WRITER].ingest(batch)
    except Exception:
        return _error(500, "the batch was not stored (database error); send it again")
    # The answer is a fixed shape: no JSON encoder per request.
    return web.Response(body=b'{"accepted": %d}' % accepted, content_type="application/json")


@routes.get("/api/v1/plan")
async def plan(request: web.Request) -> web.Response:
    app = request.app
    if not _authorized(request):
        return await _refuse(request, Refused(401, "auth", "missing or wrong bearer token"))
    role, host = request.query.get("role", ""), request.query.get("host", "")
    found = [h for h in app[INVENTORY].of_role(role) if h.name == host]
    if not found:
        return _error(404, f"no {role!r} host named {host!r} in the inventory")
    return web.json_response(encode(_plan(app, role, host, found[0].address)))


def _all_gates(request: web.Request, ev: Evaluation) -> list[GateDecision]:
    spec, inv = request.app[SPEC], request.app[INVENTORY]
    return [gate(spec, inv, ev, mode) for mode in spec.modes]


@routes.get("/api/v1/report")
async def report(request: web.Request) -> web.Response:
    from netcheck.controller.render import FORMATS, MEDIA_TYPES, render_report

    fmt = request.query.get("format", "json")
    if fmt not in MEDIA_TYPES:
        return _error(400, f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")
    ev = await current_evaluation(request.app)
    text = render_report(request.app[SPEC], ev, _all_gates(request, ev), fmt)
    return web.Response(text=text, content_type=MEDIA_TYPES[fmt], charset="utf-8")


@routes.get("/api/v1/gate")
async def gate_endpoint(request: web.Request) -> web.Response:
    mode = request.query.get("mode", "")
    vm = request.query.get("vm") or None
    ev = await current_evaluation(request.app)
    try:
        d = gate(request.app[SPEC], request.app[INVENTORY], ev, mode, vm)
    except GateError as exc:
        return _error(400, str(exc))
    return web.json_response(decision_to_dict(d))


@routes.get("/")
async def page(request: web.Request) -> web.Response:
    from netcheck.controller.render import render_page

    ev = await current_evaluation(request.app)
    refresh = request.app[REFRESH] or None
    html = render_page(request.app[SPEC], ev, _all_gates(request, ev), refresh_seconds=refresh)
    return web.Response(text=html, content_type="text/html", charset="utf-8")


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    data = await asyncio.to_thread(generate_latest, request.app[REGISTRY])
    resp = web.Response(body=data)
    resp.headers["Content-Type"] = METRICS_TYPE
    return resp


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    stats: dict[str, Any] = await asyncio.to_thread(request.app[STORE].stats)
    return web.Response(text=json.dumps({"status": "ok", **stats}), content_type="application/json")
