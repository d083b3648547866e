"""SQLite storage: agents, the newest result per check, listeners, peers, counters.

Durability: WAL mode with ``synchronous=FULL``, so every commit is fsynced to the WAL
before it returns. :meth:`Store.ingest_group` writes any number of batches (and rejection
counts) in ONE transaction; the HTTP API answers each agent only after the transaction that
holds its batch committed (acknowledged = committed, and on disk). One fsync per group, not
per batch nor per result: see :mod:`controller.writer`.

Results: one row per check id, the newest by ``started_at`` (an older result arriving late
never overwrites a newer one), one column per :class:`~agent.wire.ProbeResult` field (the
nested ``service_check`` as JSON), written with ``executemany`` over tuples: no JSON is
re-serialised per result. A wire field added later gets its column at the next open. There
is no history table: the newest result is what evaluation reads, and history is Prometheus'
job (``/metrics`` scraped over time). Results whose check id matches no expected check are
kept like any other (evaluation lists them as unexpected).

Listeners: each batch carries the agent's whole listener picture. The store keeps the newest
status per (host, port), ``closed`` ones included with their ``since``, ordered by the
batch's ``sent_at`` (a late, older batch never overwrites a newer status); ports a newer
picture no longer mentions are removed. Peers seen are bounded to :data:`PEERS_PER_PORT`
addresses per host and port (the most recent ones).

Counters (``results_ingested``, ``batches_ingested``, ``rejected:<reason>``,
``dropped:<role>:<host>``) are persisted in the same transactions, so the ``_total``
metrics survive a restart.

:attr:`Store.version` grows by one at every commit, so readers can cache what they derive.
The connection is shared by threads behind a lock; each call is short.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from netcheck.agent.wire import (
    ListenerStatus,
    PeerSeen,
    ProbeResult,
    Registration,
    ResultBatch,
    ServiceCheck,
)
from netcheck.controller.model import AgentSeen

PEERS_PER_PORT = 32

_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ProbeResult))
_SC = _FIELDS.index("service_check")
_RST = _FIELDS.index("rst_from_firewall")
_NOT_NULL = {"check_id", "interaction", "src_host", "src_address", "dst_host", "dst_address"} | {
    "port",
    "state",
    "mode",
    "attempts",
    "started_at",
}
_values = operator.attrgetter(*_FIELDS)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    host TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    address TEXT NOT NULL,
    mode TEXT NOT NULL,
    version TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_report REAL
);
CREATE TABLE IF NOT EXISTS listeners (
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    owner TEXT NOT NULL,
    error TEXT NOT NULL,
    reported_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (host, port)
);
CREATE TABLE IF NOT EXISTS peers (
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    src_address TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (host, port, src_address)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
);
"""


def _column(name: str) -> str:
    """The column of one ProbeResult field: its SQL type, NOT NULL, its default."""
    f = next(f for f in dataclasses.fields(ProbeResult) if f.name == name)
    kind = str(f.type)
    sql = "REAL" if kind.startswith("float") else "INTEGER" if kind.startswith("int") else ""
    sql = sql or ("TEXT" if kind.startswith(("str", "Probe", "ServiceCheck")) else "INTEGER")
    out = f"{name} {sql}".rstrip() + (" NOT NULL" if name in _NOT_NULL else "")
    if isinstance(f.default, str | int | float) and not isinstance(f.default, bool):
        out += f" DEFAULT {f.default!r}"
    return out


_RESULTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS results (check_id TEXT PRIMARY KEY, "
    + ", ".join(_column(n) for n in _FIELDS[1:])
    + ", received_at REAL NOT NULL)"
)
_COLS = ", ".join(_FIELDS)


@dataclasses.dataclass(frozen=True)
class _Upsert:
    """An ``INSERT ... VALUES (row), (row), ... ON CONFLICT ...`` for many rows at once."""

    head: str
    width: int
    tail: str

    def run(self, c: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Write ``rows`` with one statement per :data:`_PARAMS` parameters.

        Not ``executemany``: the sqlite3 module lets go of the GIL around every step, so a
        worker thread doing one step per row waits for the event loop's thread again and
        again (up to the 5 ms switch interval each time); one statement per chunk does not.
        """
        per = max(1, _PARAMS // self.width)
        one = "(" + ", ".join("?" * self.width) + ")"
        for i in range(0, len(rows), per):
            chunk = rows[i : i + per]
            values = ", ".join([one] * len(chunk))
            c.execute(f"{self.head} VALUES {values} {self.tail}", [v for r in chunk for v in r])


_PARAMS = 30_000  # below SQLite's limit on bound parameters per statement (32,766)
_RESULTS_UPSERT = _Upsert(
    f"INSERT INTO results ({_COLS}, received_at)",
    len(_FIELDS) + 1,
    "ON CONFLICT (check_id) DO UPDATE SET "
    + ", ".join(f"{n} = excluded.{n}" for n in (*_FIELDS[1:], "received_at"))
    + " WHERE excluded.started_at >= results.started_at",
)
_LISTENERS_UPSERT = _Upsert(
    "INSERT INTO listeners (host, port, state, since, owner, error, reported_at)",
    7,
    """ON CONFLICT (host, port) DO UPDATE SET state = excluded.state, since = excluded.since,
    owner = excluded.owner, error = excluded.error, reported_at = excluded.reported_at
    WHERE excluded.reported_at >= listeners.reported_at""",
)
# Ports a newer picture of the host no longer mentions. Parameter: JSON [[host, at, [ports]]].
_DROP_LISTENERS = """
DELETE FROM listeners WHERE rowid IN (
    SELECT l.rowid FROM json_each(?) AS p JOIN listeners AS l ON l.host = p.value ->> 0
    WHERE l.reported_at < p.value ->> 1
      AND l.port NOT IN (SELECT value FROM json_each(p.value -> 2)))
"""
_PEERS_UPSERT = _Upsert(
    "INSERT INTO peers (host, port, src_address, at)",
    4,
    "ON CONFLICT (host, port, src_address) DO UPDATE SET at = max(at, excluded.at)",
)
_TRIM_PEERS = """
DELETE FROM peers WHERE host = ? AND port = ? AND src_address NOT IN (
    SELECT src_address FROM peers WHERE host = ? AND port = ? ORDER BY at DESC LIMIT ?)
"""
_BUMPS = _Upsert(
    "INSERT INTO counters (name, value)",
    2,
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
)
_LAST_REPORT = "UPDATE agents SET last_report = ? WHERE host IN (SELECT value FROM json_each(?))"

_SERVICE_CHECK = TypeAdapter(ServiceCheck)
_OLD_RESULTS = TypeAdapter(list[ProbeResult])


def result_row(r: ProbeResult, received_at: float) -> tuple[Any, ...]:
    """One results row: the fields in order (``service_check`` as JSON), then received_at."""
    if r.service_check is None:
        return (*_values(r), received_at)
    row: list[Any] = list(_values(r))
    row[_SC] = _SERVICE_CHECK.dump_json(r.service_check).decode()
    row.append(received_at)
    return tuple(row)


def _result(row: Sequence[Any]) -> ProbeResult:
    values = list(row)
    if values[_SC] is not None:
        values[_SC] = _SERVICE_CHECK.validate_json(values[_SC])
    if values[_RST] is not None:
        values[_RST] = bool(values[_RST])
    return ProbeResult(*values)


def _columns(c: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in c.execute(f"PRAGMA table_info({table})")]


def _migrate(c: sqlite3.Connection) -> None:
    """Bring a file written by an older version to the current layout (one transaction)."""
    c.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            c.execute(statement)
        if "reported_at" not in _columns(c, "listeners"):
            c.execute("ALTER TABLE listeners ADD COLUMN reported_at REAL NOT NULL DEFAULT 0")
        old = _columns(c, "results")
        if "body" in old:  # version 0.1: one JSON body per result
            rows = c.execute("SELECT body, received_at FROM results").fetchall()
            c.execute("DROP TABLE results")
            c.execute(_RESULTS_TABLE)
            if rows:
                results = _OLD_RESULTS.validate_json("[" + ",".join(b for b, _ in rows) + "]")
                pairs = zip(results, rows, strict=True)
                _RESULTS_UPSERT.run(c, [result_row(r, at) for r, (_, at) in pairs])
        else:
            c.execute(_RESULTS_TABLE)
            for name in _FIELDS:
                if old and name not in old:  # a wire field added since the file was made
                    c.execute(f"ALTER TABLE results ADD COLUMN {_column(name)}")
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise


def _write_group(
    c: sqlite3.Connection, batches: Sequence[ResultBatch], now: float, rejected: Sequence[str]
) -> None:
    """Every batch of a group, a few statements per group (not per batch, not per row)."""
    _RESULTS_UPSERT.run(c, [result_row(r, now) for b in batches for r in b.results])
    pictures: dict[str, tuple[float, list[int]]] = {}  # host -> its newest listener picture
    rows: list[tuple[Any, ...]] = []
    for b in batches:
        if b.listeners:
            at = b.sent_at or now
            rows.extend(
                (b.host, s.port, s.state, s.since, s.owner, s.error, at) for s in b.listeners
            )
            if b.host not in pictures or pictures[b.host][0] <= at:
                pictures[b.host] = (at, [s.port for s in b.listeners])
    _LISTENERS_UPSERT.run(c, rows)
    if pictures:
        c.execute(_DROP_LISTENERS, (json.dumps([[h, at, ps] for h, (at, ps) in pictures.items()]),))
    peers = [(b.host, p.port, p.src_address, p.at) for b in batches for p in b.peers]
    _PEERS_UPSERT.run(c, peers)
    for host, port in sorted({(h, port) for h, port, _, _ in peers}):
        c.execute(_TRIM_PEERS, (host, port, host, port, PEERS_PER_PORT))
    if batches:
        c.execute(_LAST_REPORT, (now, json.dumps(sorted({b.host for b in batches}))))
    bumps: dict[str, float] = defaultdict(float)
    if batches:
        bumps["results_ingested"] = sum(len(b.results) for b in batches)
        bumps["batches_ingested"] = len(batches)
    for b in batches:
        if b.dropped:
            bumps[f"dropped:{b.role}:{b.host}"] += b.dropped
    for reason in rejected:
        bumps[f"rejected:{reason}"] += 1
    _BUMPS.run(c, list(bumps.items()))


class Store:
    """One SQLite file. Open with :meth:`open`; every method is one short transaction."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path
        self.version = 0  # bumped after every commit
        self._ckpt: sqlite3.Connection | None = None
        self._ckpt_lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, *, background_checkpoints: bool = False) -> Store:
        """Open (and create or migrate) the file.

        ``background_checkpoints``: commits never copy the WAL back into the database file
        (SQLite's automatic checkpoint would do it inside whichever commit crosses 1,000
        pages, making that batch wait for a large write and fsync); the owner calls
        :meth:`checkpoint` from elsewhere instead (the server: a background task).
        """
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        _migrate(conn)
        if background_checkpoints:
            conn.execute("PRAGMA wal_autocheckpoint=0")
        return cls(conn, str(path))

    def checkpoint(self) -> None:
        """Copy committed pages from the WAL into the database file, without blocking writers.

        Its own connection, so the writer can keep committing meanwhile (PASSIVE mode).
        """
        with self._ckpt_lock:
            if self._ckpt is None:
                self._ckpt = sqlite3.connect(self.path, check_same_thread=False)
                self._ckpt.execute("PRAGMA busy_timeout=5000")
            self._ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        with self._ckpt_lock:
            if self._ckpt is not None:
                self._ckpt.close()
                self._ckpt = None
        with self._lock:
            self._conn.close()

    # -- writes ---------------------------------------------------------------------------

    def register(self, reg: Registration, now: float) -> None:
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                """INSERT INTO agents (host, role, address, mode, version, registered_at)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (host) DO UPDATE SET role = excluded.role,
                     address = excluded.address, mode = excluded.mode,
                     version = excluded.version, registered_at = excluded.registered_at""",
                (reg.host, reg.role, reg.address, reg.mode, reg.version, now),
            )
        self.version += 1

    def ingest(self, batch: ResultBatch, now: float) -> int:
        """Write one batch in one transaction; returns the number of results accepted."""
        return self.ingest_group([batch], now)[0]

    def ingest_group(
        self, batches: Sequence[ResultBatch], now: float, rejected: Sequence[str] = ()
    ) -> list[int]:
        """Write every batch (and count every rejection reason) in ONE transaction.

        Returns the number of results accepted per batch. Any error rolls the whole group
        back: nothing of it is kept.
        """
        with self._lock, self._conn:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            _write_group(c, batches, now, rejected)
        self.version += 1
        return [len(b.results) for b in batches]

    def count_rejected(self, reason: str) -> None:
        self.ingest_group([], 0.0, [reason])

    # -- reads ----------------------------------------------------------------------------

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def agents(self) -> list[AgentSeen]:
        rows = self._all(
            "SELECT role, host, address, mode, version, last_report FROM agents ORDER BY role, host"
        )
        return [AgentSeen(*row) for row in rows]

    def agent(self, host: str) -> AgentSeen | None:
        rows = self._all(
            "SELECT role, host, address, mode, version, last_report FROM agents WHERE host = ?",
            (host,),
        )
        return AgentSeen(*rows[0]) if rows else None

    def results(self) -> list[ProbeResult]:
        return [_result(row) for row in self._all(f"SELECT {_COLS} FROM results ORDER BY check_id")]

    def listeners(self) -> dict[str, tuple[ListenerStatus, ...]]:
        out: dict[str, list[ListenerStatus]] = defaultdict(list)
        for host, port, state, since, owner, error in self._all(
            "SELECT host, port, state, since, owner, error FROM listeners ORDER BY host, port"
        ):
            out[host].append(ListenerStatus(port, state, since, owner, error))
        return {h: tuple(v) for h, v in out.items()}

    def peers(self) -> dict[str, tuple[PeerSeen, ...]]:
        out: dict[str, list[PeerSeen]] = defaultdict(list)
        for host, port, addr, at in self._all(
            "SELECT host, port, src_address, at FROM peers ORDER BY host, port, at"
        ):
            out[host].append(PeerSeen(port, addr, at))
        return {h: tuple(v) for h, v in out.items()}

    def counters(self) -> dict[str, float]:
        return dict(self._all("SELECT name, value FROM counters"))

    def stats(self) -> dict[str, Any]:
        """Small facts for /healthz."""
        (n,) = self._all("SELECT count(*) FROM results")[0]
        (a,) = self._all("SELECT count(*) FROM agents")[0]
        return {"results": n, "agents": a}
