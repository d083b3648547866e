"""SQLite storage: agents, the newest result per check, listeners, peers, counters.

Durability: WAL mode with ``synchronous=FULL``, so every commit is fsynced to the WAL
before it returns; a batch is written in ONE transaction and the caller answers the agent
only after :meth:`Store.ingest` returns (acknowledged = committed, and on disk). FULL
costs one fsync per batch, not per result, which batching makes cheap.

Results: one row per check id, the newest by ``started_at`` (an older result arriving late
never overwrites a newer one). There is no history table: the newest result is what
evaluation reads, and history is Prometheus' job (``/metrics`` scraped over time).
Results whose check id matches no expected check are kept like any other (evaluation lists
them as unexpected). Peers seen are bounded to :data:`PEERS_PER_PORT` addresses per host
and port (the most recent ones).

Counters (``results_ingested``, ``batches_ingested``, ``rejected:<reason>``,
``dropped:<role>:<host>``) are persisted in the same transactions, so the ``_total``
metrics survive a restart.

The connection is shared by threads (the app calls in via ``asyncio.to_thread``) behind a
lock; each call is short.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from agent.wire import ListenerStatus, PeerSeen, ProbeResult, Registration, ResultBatch
from controller.model import AgentSeen

PEERS_PER_PORT = 32

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
CREATE TABLE IF NOT EXISTS results (
    check_id TEXT PRIMARY KEY,
    src_host TEXT NOT NULL,
    started_at REAL NOT NULL,
    received_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS listeners (
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    owner TEXT NOT NULL,
    error TEXT NOT NULL,
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

_UPSERT_RESULT = """
INSERT INTO results (check_id, src_host, started_at, received_at, body) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (check_id) DO UPDATE SET
    src_host = excluded.src_host, started_at = excluded.started_at,
    received_at = excluded.received_at, body = excluded.body
WHERE excluded.started_at >= results.started_at
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

_RESULT = TypeAdapter(ProbeResult)
_RESULTS = TypeAdapter(list[ProbeResult])


class Store:
    """One SQLite file. Open with :meth:`open`; every method is a short transaction."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> Store:
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(_SCHEMA)
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

    def ingest(self, batch: ResultBatch, now: float) -> int:
        """Write one batch in one transaction; returns the number of results accepted."""
        rows = [
            (r.check_id, r.src_host, r.started_at, now, _RESULT.dump_json(r).decode())
            for r in batch.results
        ]
        with self._lock, self._conn:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            c.executemany(_UPSERT_RESULT, rows)
            if batch.listeners:
                c.execute("DELETE FROM listeners WHERE host = ?", (batch.host,))
                c.executemany(
                    "INSERT OR REPLACE INTO listeners VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (batch.host, s.port, s.state, s.since, s.owner, s.error)
                        for s in batch.listeners
                    ],
                )
            if batch.peers:
                c.executemany(
                    _UPSERT_PEER, [(batch.host, p.port, p.src_address, p.at) for p in batch.peers]
                )
                for port in {p.port for p in batch.peers}:
                    c.execute(_TRIM_PEERS, (batch.host, port, batch.host, port, PEERS_PER_PORT))
            c.execute("UPDATE agents SET last_report = ? WHERE host = ?", (now, batch.host))
            bumps = [("results_ingested", len(rows)), ("batches_ingested", 1)]
            if batch.dropped:
                bumps.append((f"dropped:{batch.role}:{batch.host}", batch.dropped))
            c.executemany(_BUMP, bumps)
        return len(rows)

    def count_rejected(self, reason: str) -> None:
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(_BUMP, (f"rejected:{reason}", 1))

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
        bodies = [b for (b,) in self._all("SELECT body FROM results ORDER BY check_id")]
        return _RESULTS.validate_json("[" + ",".join(bodies) + "]")

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
