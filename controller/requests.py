"""Requests: work the operator asks of one agent (an exposure sweep, ...), kept in the store.

The channel is generic (see :class:`~netcheck.agent.wire.AgentRequest`): a request has a kind,
parameters, an id, the agent that runs it (role + host) and a deadline. The operator creates
it (``netcheck-controller request KIND``, or ``POST /api/v1/requests`` with the read
credential); the controller hands every *pending* request of an agent over in its answers to
that agent (the results ack, and ``POST /api/v1/agent-requests``); the agent acknowledges it
(a report with state ``running``) and reports once more when it is ``done`` or ``failed``.
A request whose deadline passes before it ended is ``expired``. Everything is one row of the
store's ``requests`` table (layout version 6), so a request created while the controller is
away, or by the command line on the controller's host, is handed over all the same.

:class:`RequestBook` has a SQLite connection of its own; the requests pending per agent are
kept in memory (a handler's lookup does no I/O) and reloaded by :meth:`RequestBook.refresh`
(a background task of the app, every :data:`REFRESH_SECONDS`, and after each own write).

Parameters are checked per kind (:data:`PARAMS`: name -> bounds and default); reports per
kind (:data:`CHECKERS`): an exposure report may name only the addresses the agent's own plan
probes. To add a kind: its name in ``wire.RequestKind``, its parameters here, a checker, and
the agent's handler (``agent/requests.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from netcheck.agent.wire import (
    MAX_REQUESTS,
    REQUEST_KINDS,
    AgentRequest,
    RequestExchange,
    RequestParam,
    RequestReport,
)
from netcheck.controller.appkeys import CLOCK, LIVE, REGISTRY
from netcheck.controller.errors import NetcheckError
from netcheck.controller.expand import ExpectedCheck
from netcheck.controller.inventory import Inventory
from netcheck.controller.spec import Spec

log = logging.getLogger("netcheck.controller")
REFRESH_SECONDS = 0.5
DEFAULT_DEADLINE_S = 900.0
MAX_DEADLINE_S = 86_400.0
# Rows kept: the oldest ended requests beyond this are deleted.
MAX_ROWS = 10_000
STATES = ("pending", "running", "done", "failed", "expired")
ENDED = frozenset({"done", "failed", "expired"})


@dataclasses.dataclass(frozen=True)
class Bound:
    """A numeric parameter: its bounds, its default, and what it means."""

    lo: float
    hi: float
    default: float
    help: str
    integer: bool = False


# kind -> parameter name -> bounds. Numbers only so far (a kind may add text parameters).
PARAMS: dict[str, dict[str, Bound]] = {
    "exposure": {
        "rate": Bound(1, 1_000_000, 20_000, "SYNs (or connects) sent per second at most", True),
        "concurrency": Bound(1, 65_535, 4_096, "connect mode: connections at once", True),
        "timeout": Bound(0.05, 30.0, 1.0, "seconds a port is waited for after its SYN"),
        "retries": Bound(0, 3, 1, "SYNs (connects) sent again to the ports still silent", True),
        "first_port": Bound(1, 65_535, 1, "the lowest port swept", True),
        "last_port": Bound(1, 65_535, 65_535, "the highest port swept", True),
    },
    # Qualify the agent's data paths (controller.interconnect): MTU and round trip always,
    # throughput both ways only with throughput 1 (it loads the link).
    "interconnect": {
        "throughput": Bound(0, 1, 0, "1: also measure throughput both ways", True),
    },
}


class RequestError(NetcheckError):
    """A request or a report that cannot be taken: `status` (4xx) and the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def num(x: float) -> str:
    """A bound in words: 1000000 -> "1000000", 0.05 -> "0.05"."""
    return str(int(x)) if x == int(x) else f"{x:g}"


def new_id() -> str:
    return secrets.token_hex(16)


def params_for(kind: str, given: Mapping[str, Any]) -> tuple[RequestParam, ...]:
    """`given` checked against the kind's :data:`PARAMS` (unknown names, wrong types and
    values out of bounds refused), defaults filled in."""
    if kind not in PARAMS:
        raise RequestError(400, f"unknown request kind {kind!r} (kinds: {', '.join(PARAMS)})")
    rules = PARAMS[kind]
    unknown = sorted(set(given) - set(rules))
    if unknown:
        raise RequestError(
            400, f"{kind}: unknown parameter(s) {unknown} (known: {', '.join(rules)})"
        )
    out = []
    for name, rule in rules.items():
        value = given.get(name, rule.default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(400, f"{kind}: {name} must be a number, not {value!r}")
        if not rule.lo <= value <= rule.hi:
            raise RequestError(
                400,
                f"{kind}: {name} {value!r} is not within {num(rule.lo)}-{num(rule.hi)}",
            )
        if rule.integer and value != int(value):
            raise RequestError(400, f"{kind}: {name} {value!r} is not a whole number")
        out.append(RequestParam(name, float(value)))
    values = {p.name: float(p.value) for p in out}
    if kind == "exposure" and values["first_port"] > values["last_port"]:
        raise RequestError(400, "exposure: first_port is above last_port")
    return tuple(out)


def agent_hosts(
    spec: Spec, inventory: Inventory, role: str | None = None, host: str | None = None
) -> list[tuple[str, str]]:
    """(role, host) of every agent host matching the filters; RequestError when none does
    (an unknown role, or a host that is not one of its agents)."""
    if role is not None and role not in spec.roles:
        raise RequestError(400, f"unknown role {role!r}")
    if role is not None and not spec.roles[role].agent:
        raise RequestError(400, f"role {role!r} does not run an agent")
    out = [
        (r, h.name)
        for r, rr in spec.roles.items()
        if rr.agent and role in (None, r)
        for h in inventory.of_role(r)
        if host in (None, h.name)
    ]
    if not out:
        what = f"host {host!r}" if host else "host"
        raise RequestError(
            400,
            f"no agent {what}{f' of role {role!r}' if role else ''} in the inventory",
        )
    return out


def make_requests(
    spec: Spec,
    inventory: Inventory,
    kind: str,
    params: Mapping[str, Any],
    now: float,
    *,
    role: str | None = None,
    host: str | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
) -> list[AgentRequest]:
    """One request of `kind` per agent host matching `role`/`host` (checked, not stored)."""
    checked = params_for(kind, params)
    if not 0 < deadline_s <= MAX_DEADLINE_S:
        raise RequestError(400, f"deadline {deadline_s!r} s is not within 0-{MAX_DEADLINE_S:g} s")
    return [
        AgentRequest(new_id(), kind, r, h, now + deadline_s, checked, now)  # type: ignore[arg-type]
        for r, h in agent_hosts(spec, inventory, role, host)
    ]


_CREATE_KEYS = frozenset({"kind", "role", "host", "params", "deadline_s"})


def parse_create(body: bytes) -> dict[str, Any]:
    """The JSON body of ``POST /api/v1/requests``: ``{"kind": ..., "role"?, "host"?,
    "params"?: {name: number}, "deadline_s"?: seconds}``."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise RequestError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(400, "the body must be a JSON object")
    unknown = sorted(set(data) - _CREATE_KEYS)
    if unknown:
        raise RequestError(400, f"unknown field(s) {unknown} (known: {sorted(_CREATE_KEYS)})")
    if not isinstance(data.get("kind"), str):
        raise RequestError(400, f"kind must be one of {list(REQUEST_KINDS)}")
    for key in ("role", "host"):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise RequestError(400, f"{key} must be a string")
    if not isinstance(data.get("params", {}), dict):
        raise RequestError(400, "params must be an object of name: number")
    deadline = data.get("deadline_s", DEFAULT_DEADLINE_S)
    if isinstance(deadline, bool) or not isinstance(deadline, int | float):
        raise RequestError(400, "deadline_s must be a number of seconds")
    return data


# -- reports ------------------------------------------------------------------------------

Checker = Callable[[RequestReport, Sequence[ExpectedCheck]], None]


def _check_exposure(report: RequestReport, plan: Sequence[ExpectedCheck]) -> None:
    """An exposure report names only the destinations of the agent's own plan."""
    allowed = {(c.spec.dst_host, c.spec.dst_address) for c in plan}
    items: list[tuple[str, Any]] = [(f"swept[{i}]", s) for i, s in enumerate(report.swept)]
    items += [(f"open_ports[{i}]", p) for i, p in enumerate(report.open_ports)]
    for where, item in items:
        if (item.dst_host, item.dst_address) not in allowed:
            raise RequestError(
                400,
                f"report {report.id}: {where}: {item.dst_host} {item.dst_address} is not a "
                "destination of this agent's plan",
            )


def _check_interconnect(report: RequestReport, plan: Sequence[ExpectedCheck]) -> None:
    """An interconnect report measures only destinations and ports of the agent's own plan."""
    allowed = {(c.spec.interaction, c.spec.dst_host, c.spec.dst_address, c.spec.port) for c in plan}
    for i, m in enumerate(report.paths):
        if (m.interaction, m.dst_host, m.dst_address, m.port) not in allowed:
            raise RequestError(
                400,
                f"report {report.id}: paths[{i}]: interaction {m.interaction} {m.dst_host} "
                f"{m.dst_address}:{m.port} is not a check of this agent's plan",
            )


CHECKERS: dict[str, Checker] = {"exposure": _check_exposure, "interconnect": _check_interconnect}
_EXCHANGE = TypeAdapter(RequestExchange)
_REPORT = TypeAdapter(RequestReport)
_REQUEST = TypeAdapter(AgentRequest)


def parse_exchange(body: bytes) -> RequestExchange:
    try:
        return _EXCHANGE.validate_json(body)
    except ValidationError as exc:
        errs = exc.errors(include_url=False)
        loc = ".".join(str(p) for p in errs[0]["loc"]) or "body"
        raise RequestError(400, f"agent-requests: {loc}: {errs[0]['msg']}") from None


_COLS = "id, kind, role, host, params, created_at, deadline, state, updated_at, detail, report"


@dataclasses.dataclass(frozen=True)
class StoredRequest:
    """A request as the store holds it, with its state and the agent's last report."""

    request: AgentRequest
    state: str
    updated_at: float
    detail: str
    report: RequestReport | None

    def to_dict(self) -> dict[str, Any]:
        from netcheck.agent.wire import encode

        r = self.request
        return {
            "id": r.id,
            "kind": r.kind,
            "role": r.role,
            "host": r.host,
            "params": {p.name: p.value for p in r.params},
            "created_at": r.created_at,
            "deadline": r.deadline,
            "state": self.state,
            "updated_at": self.updated_at,
            "detail": self.detail,
            "report": encode(self.report) if self.report is not None else None,
        }


def _row(row: Sequence[Any]) -> StoredRequest:
    rid, kind, role, host, params, created, deadline, state, updated, detail, report = row
    req = AgentRequest(
        rid,
        kind,
        role,
        host,
        deadline,
        tuple(RequestParam(n, v) for n, v in json.loads(params)),
        created,
    )
    rep = _REPORT.validate_json(report) if report else None
    return StoredRequest(req, state, updated, detail, rep)


class RequestBook:
    """The ``requests`` table of one store file (its own connection, behind a lock)."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._clock = clock
        self._pending: dict[tuple[str, str], tuple[AgentRequest, ...]] = {}
        self._ended: tuple[StoredRequest, ...] = ()
        self._done: tuple[StoredRequest, ...] = ()
        self._mark: tuple[Any, ...] | None = None
        self.version = 0  # grows whenever what the book holds changed
        self.refresh()

    @classmethod
    def open(cls, db: str | Path, clock: Callable[[], float] = time.time) -> RequestBook:
        """The book of the store file `db` (created or migrated first)."""
        from netcheck.controller.store import Store

        Store.open(db).close()
        conn = sqlite3.connect(str(db), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=5000")
        return cls(conn, clock)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- writes --------------------------------------------------------------------------

    def add(self, requests: Iterable[AgentRequest], by: str) -> None:
        """Store `requests` (state pending) in one transaction."""
        rows = [
            (
                r.id,
                r.kind,
                r.role,
                r.host,
                json.dumps([[p.name, p.value] for p in r.params]),
                r.created_at,
                r.deadline,
                "pending",
                r.created_at,
                by,
            )
            for r in requests
        ]
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany(
                    "INSERT INTO requests (id, kind, role, host, params, created_at, deadline, "
                    "state, updated_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                c.execute(
                    "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE state IN "
                    "('done', 'failed', 'expired') ORDER BY updated_at DESC LIMIT -1 OFFSET ?)",
                    (MAX_ROWS,),
                )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        self.refresh()

    def take(
        self,
        exchange: RequestExchange,
        plan: Sequence[ExpectedCheck],
        now: float,
    ) -> int:
        """The agent's reports, each checked (its request is this agent's, the same kind, not
        ended, and its results pass the kind's checker), then stored in one transaction; the
        first problem refuses them all (:class:`RequestError`). The number stored."""
        if not exchange.reports:
            return 0
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                for i, rep in enumerate(exchange.reports):
                    row = c.execute(
                        "SELECT role, host, kind, state, deadline FROM requests WHERE id = ?",
                        (rep.id,),
                    ).fetchone()
                    where = f"reports[{i}]"
                    if row is None:
                        raise RequestError(404, f"{where}: no request {rep.id!r}")
                    role, host, kind, state, deadline = row
                    if (role, host) != (exchange.role, exchange.host):
                        raise RequestError(
                            403, f"{where}: request {rep.id} is for {role} {host}, not this agent"
                        )
                    if rep.kind != kind:
                        raise RequestError(
                            400,
                            f"{where}: request {rep.id} is {kind}, not {rep.kind}",
                        )
                    if state in ENDED:
                        if state == rep.state:  # the same end sent again: already stored
                            continue
                        raise RequestError(409, f"{where}: request {rep.id} is {state} already")
                    if state == "running" and rep.state == "running":
                        continue
                    checker = CHECKERS.get(kind)
                    if checker is not None:
                        checker(rep, plan)
                    new_state: str = rep.state
                    if new_state == "running" and now > deadline:
                        new_state = "expired"
                    c.execute(
                        "UPDATE requests SET state = ?, updated_at = ?, detail = ?, report = ? "
                        "WHERE id = ?",
                        (
                            new_state,
                            now,
                            rep.detail,
                            _REPORT.dump_json(rep).decode() if new_state in ENDED else None,
                            rep.id,
                        ),
                    )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        self.refresh()
        return len(exchange.reports)

    def _expire(self, now: float) -> None:
        """Mark what is past its deadline expired (a write only when there is such a row)."""
        with self._lock:
            due = self._conn.execute(
                "SELECT 1 FROM requests WHERE state IN ('pending', 'running') AND deadline < ? "
                "LIMIT 1",
                (now,),
            ).fetchone()
            if due is None:
                return
            self._conn.execute(
                "UPDATE requests SET state = 'expired', updated_at = ?, detail = CASE "
                "WHEN detail = '' THEN 'the deadline passed before the agent ended it' "
                "ELSE detail END WHERE state IN ('pending', 'running') AND deadline < ?",
                (now, now),
            )

    # -- reads ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Expire what is past its deadline; reload the pending requests and the newest
        ended one per (kind, role, host), when the table changed since the last look."""
        self._expire(self._clock())
        with self._lock:
            mark = self._conn.execute(
                "SELECT count(*), max(updated_at), total(length(state)) FROM requests"
            ).fetchone()
            if mark == self._mark:
                return
            self._mark = mark
            rows = self._conn.execute(
                f"SELECT {_COLS} FROM requests WHERE state = 'pending' ORDER BY created_at"
            ).fetchall()
            ended = self._conn.execute(
                f"SELECT {_COLS} FROM requests WHERE rowid IN (SELECT rowid FROM (SELECT rowid, "
                "row_number() OVER (PARTITION BY kind, role, host ORDER BY updated_at DESC) AS n "
                "FROM requests WHERE state IN ('done', 'failed', 'expired')) WHERE n = 1) "
                "ORDER BY kind, role, host"
            ).fetchall()
            done = self._conn.execute(
                f"SELECT {_COLS} FROM requests WHERE rowid IN (SELECT rowid FROM (SELECT rowid, "
                "row_number() OVER (PARTITION BY kind, role, host ORDER BY updated_at DESC) AS n "
                "FROM requests WHERE state = 'done') WHERE n = 1) ORDER BY kind, role, host"
            ).fetchall()
        pending: dict[tuple[str, str], list[AgentRequest]] = defaultdict(list)
        for row in rows:
            req = _row(row).request
            if len(pending[(req.role, req.host)]) < MAX_REQUESTS:
                pending[(req.role, req.host)].append(req)
        self._pending = {k: tuple(v) for k, v in pending.items()}
        self._ended = tuple(_row(r) for r in ended)
        self._done = tuple(_row(r) for r in done)
        self.version += 1

    def pending(self, role: str, host: str) -> tuple[AgentRequest, ...]:
        """The requests waiting for this agent (in memory: no I/O)."""
        return self._pending.get((role, host), ())

    def ended(self) -> tuple[StoredRequest, ...]:
        """The newest ended request per (kind, role, host) (in memory)."""
        return self._ended

    def done(self) -> tuple[StoredRequest, ...]:
        """The newest request that ended done per (kind, role, host) (in memory): a later
        failed or expired one does not hide what it found."""
        return self._done

    def all(self) -> list[StoredRequest]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLS} FROM requests ORDER BY created_at DESC LIMIT 1000"
            ).fetchall()
        return [_row(r) for r in rows]

    def get(self, rid: str) -> StoredRequest | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLS} FROM requests WHERE id = ?",
                (rid,),
            ).fetchone()
        return _row(row) if row else None


def encode_requests(requests: Sequence[AgentRequest]) -> list[Any]:
    return [_REQUEST.dump_python(r, mode="json") for r in requests]


# -- the app's parts -------------------------------------------------------------------------

BOOK = web.AppKey("requests", RequestBook)
# True when the operator's credential (the read token) guards the API: only then may
# requests be created over HTTP (with --open-reads anyone could make agents sweep).
OPERATOR_WRITES = web.AppKey("operator_writes", bool)
Context = Callable[[web.Application], AsyncIterator[None]]


async def _refresher(book: RequestBook, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(book.refresh)
        except sqlite3.Error as exc:  # tried again at the next tick
            log.warning("requests: reload failed: %s", exc)


def book_ctx(db: str | Path, every_s: float = REFRESH_SECONDS) -> Context:
    """The request book of the store file `db`, reloaded every `every_s` in the background
    (after the store made or migrated the file)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        from netcheck.controller.exposure import ExposureCollector

        book = await asyncio.to_thread(RequestBook.open, db, app[CLOCK])
        app[BOOK] = book
        collector = ExposureCollector(book, lambda: app[LIVE].current.by_source)
        app[REGISTRY].register(collector)
        task = asyncio.create_task(_refresher(book, every_s), name="requests-refresh")
        try:
            yield
        finally:
            app[REGISTRY].unregister(collector)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.to_thread(book.close)

    return ctx


# -- HTTP -------------------------------------------------------------------------------------

request_routes = web.RouteTableDef()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _read(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestError(413, "the body is too large") from None


@request_routes.post("/api/v1/requests")
async def create(request: web.Request) -> web.Response:
    """The operator's request (the read credential, checked by the guard; refused when reads
    are open): one request of the kind per agent host matching role/host."""
    app = request.app
    if not app[OPERATOR_WRITES]:
        return _error(
            403,
            "requests need the operator's credential: start the controller with "
            "--read-token-file (its reads are open, so anyone could make agents sweep)",
        )
    site = app[LIVE].current
    try:
        data = parse_create(await _read(request))
        made = make_requests(
            site.spec,
            site.inventory,
            data["kind"],
            data.get("params") or {},
            app[CLOCK](),
            role=data.get("role"),
            host=data.get("host"),
            deadline_s=float(data.get("deadline_s", DEFAULT_DEADLINE_S)),
        )
    except RequestError as exc:
        return _error(exc.status, exc.message)
    await asyncio.to_thread(app[BOOK].add, made, "http")
    log.info("requests: %d %s request(s) created", len(made), made[0].kind)
    return web.json_response({"requests": encode_requests(made)}, status=201)


@request_routes.get("/api/v1/requests")
async def listing(request: web.Request) -> web.Response:
    """Requests, newest first (at most 1,000), or one by ``?id=``, with state and report."""
    book = request.app[BOOK]
    rid = request.query.get("id")
    if rid is not None:
        found = await asyncio.to_thread(book.get, rid)
        if found is None:
            return _error(404, f"no request {rid!r}")
        return web.json_response(found.to_dict())
    rows = await asyncio.to_thread(book.all)
    return web.json_response({"requests": [r.to_dict() for r in rows]})


@request_routes.post("/api/v1/agent-requests")
async def agent_exchange(request: web.Request) -> web.Response:
    """An agent's reports (checked: its own requests, its own plan's destinations) and its
    pending requests in the answer."""
    from netcheck.controller.routes import _sender

    app = request.app
    sender = _sender(request)
    try:
        exchange = parse_exchange(await _read(request))
        role, host = exchange.role, exchange.host
        if sender.host is not None and (role, host) != (sender.role, sender.host):
            raise RequestError(
                403,
                f"reports as {role} {host!r}, but the client certificate is "
                f"{sender.role} {sender.host!r}",
            )
        site = app[LIVE].current
        if (role, host) not in site.scopes:
            raise RequestError(403, f"{host!r} is not a {role} agent host of the inventory")
        plan = site.by_source.get((role, host), ())
        taken = await asyncio.to_thread(app[BOOK].take, exchange, plan, app[CLOCK]())
    except RequestError as exc:
        log.info("agent-requests refused: %s %s", exc.status, exc.message)
        return _error(exc.status, exc.message)
    pending = app[BOOK].pending(role, host)
    return web.json_response({"accepted": taken, "requests": encode_requests(pending)})
