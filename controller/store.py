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
import operator
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from agent.wire import (
    ListenerStatus,
    PeerSeen,
    ProbeResult,
    Registration,
    ResultBatch,
    ServiceCheck,
)
from controller.model import AgentSeen

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
_UPSERT_RESULT = (
    f"INSERT INTO results ({_COLS}, received_at) VALUES ({', '.join('?' * (len(_FIELDS) + 1))})"
    " ON CONFLICT (check_id) DO UPDATE SET "
    + ", ".join(f"{n} = excluded.{n}" for n in (*_FIELDS[1:], "received_at"))
    + " WHERE excluded.started_at >= results.started_at"
)
_UPSERT_LISTENER = """
INSERT INTO listeners (host, port, state, since, owner, error, reported_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (host, port) DO UPDATE SET state = excluded.state, since = excluded.since,
    owner = excluded.owner, error = excluded.error, reported_at = excluded.reported_at
WHERE excluded.reported_at >= listeners.reported_at
"""
_UPSERT_PEER = """
INSERT INTO peers (host, port, src_address, at) VALUES (?, ?, ?, ?)
ON CONFLICT (host, port, src_address) DO UPDATE SET at = max(at, excluded.at)
"""
_TRIM_PEERS = """
DELETE FROM peers WHERE host = ? AND port = ? AND src_address NOT IN (
    SELECT src_address FROM peers WHERE host = ? AND port = ? ORDER BY at DESC LIMIT ?)
"""
_BUMP = """
INSERT INTO counters (name, value) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET value = value + excluded.value
"""

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
                c.executemany(_UPSERT_RESULT, [result_row(r, at) for r, (_, at) in pairs])
        else:
            c.execute(_RESULTS_TABLE)
            for name in _FIELDS:
                if old and name not in old:  # a wire field added since the file was made
                    c.execute(f"ALTER TABLE results ADD COLUMN {_column(name)}")
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise


class Store:
    """One SQLite file. Open with :meth:`open`; every method is one short transaction."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path
        self.version = 0  # bumped after every commit

    @classmethod
    def open(cls, path: str | Path) -> Store:
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        _migrate(conn)
        return cls(conn, str(path))

    def close(self) -> None:
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
            counts = [self._write(c, b, now) for b in batches]
            bumps: dict[str, float] = defaultdict(float)
            if batches:
                bumps["results_ingested"] = sum(counts)
                bumps["batches_ingested"] = len(batches)
            for b in batches:
                if b.dropped:
                    bumps[f"dropped:{b.role}:{b.host}"] += b.dropped
            for reason in rejected:
                bumps[f"rejected:{reason}"] += 1
            c.executemany(_BUMP, list(bumps.items()))
        self.version += 1
        return counts

    @staticmethod
    def _write(c: sqlite3.Connection, batch: ResultBatch, now: float) -> int:
        c.executemany(_UPSERT_RESULT, [result_row(r, now) for r in batch.results])
        if batch.listeners:
            at = batch.sent_at or now
            c.executemany(
                _UPSERT_LISTENER,
                [
                    (batch.host, s.port, s.state, s.since, s.owner, s.error, at)
                    for s in batch.listeners
                ],
            )
            ports = sorted({s.port for s in batch.listeners})
            marks = ", ".join("?" * len(ports))
            c.execute(
                f"DELETE FROM listeners WHERE host = ? AND reported_at < ? "
                f"AND port NOT IN ({marks})",
                (batch.host, at, *ports),
            )
        if batch.peers:
            c.executemany(
                _UPSERT_PEER, [(batch.host, p.port, p.src_address, p.at) for p in batch.peers]
            )
            for port in {p.port for p in batch.peers}:
                c.execute(_TRIM_PEERS, (batch.host, port, batch.host, port, PEERS_PER_PORT))
        c.execute("UPDATE agents SET last_report = ? WHERE host = ?", (now, batch.host))
        return len(batch.results)

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
