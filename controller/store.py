"""SQLite storage: agents, the newest result per check, listeners, peers, counters.

Durability: WAL mode with ``synchronous=FULL``, so every commit is fsynced to the WAL
before it returns. :meth:`Store.ingest_group` writes any number of batches (and rejection
counts) in ONE transaction; the HTTP API answers each agent only after the transaction that
holds its batch committed (acknowledged = committed, and on disk). One fsync per group, not
per batch nor per result: see :mod:`controller.writer`.

Results: one row per check id, the newest by ``started_at`` (an older result arriving late
never overwrites a newer one), one column per :class:`~agent.wire.ProbeResult` field (the
nested ``service_check`` as JSON) and ``sent_by``, the identity that sent it (a
:class:`SentBatch`; see :mod:`controller.schema` version 3), written as tuples in multi-row
statements: no JSON is re-serialised per result. The tables are written out in
:mod:`controller.schema`, with ``PRAGMA user_version`` and numbered migrations (a wire field
added later needs one). There is no history table: the newest result is what evaluation
reads, and history is Prometheus' job (``/metrics`` scraped over time). Results whose check
id matches no expected check are kept like any other (evaluation lists them as unexpected).

Listeners: each batch carries the agent's whole listener picture. The store keeps the newest
status per (host, port), ``closed`` ones included with their ``since``, ordered by the
batch's ``sent_at`` (a late, older batch never overwrites a newer status); ports a newer
picture no longer mentions are removed. Peers seen are bounded to :data:`PEERS_PER_PORT`
addresses per host and port (the most recent ones).

Counters (``results_ingested``, ``batches_ingested``, ``rejected:<reason>``,
``dropped:<role>:<host>``) are persisted in the same transactions, so the ``_total``
metrics survive a restart.

:attr:`Store.version` grows by one at every commit, so readers can cache what they derive
(not the schema's ``user_version``). :meth:`Store.snapshot` reads what evaluation needs in
one read transaction. The connection is shared by threads behind a lock; each call is short.
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
from types import MappingProxyType
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
from netcheck.controller.model import AgentSeen, Observed
from netcheck.controller.schema import RESULT_COLUMNS, prepare, refuse_newer

PEERS_PER_PORT = 32

_FIELDS = RESULT_COLUMNS
if tuple(f.name for f in dataclasses.fields(ProbeResult)) != _FIELDS:
    raise RuntimeError("schema.RESULT_COLUMNS and the fields of wire.ProbeResult differ")
_SC = _FIELDS.index("service_check")
_RST = _FIELDS.index("rst_from_firewall")
_values = operator.attrgetter(*_FIELDS)
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
    f"INSERT INTO results ({_COLS}, received_at, sent_by)",
    len(_FIELDS) + 2,
    "ON CONFLICT (check_id) DO UPDATE SET "
    + ", ".join(f"{n} = excluded.{n}" for n in (*_FIELDS[1:], "received_at", "sent_by"))
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


def result_row(r: ProbeResult, received_at: float) -> tuple[Any, ...]:
    """One results row: the fields in order (``service_check`` as JSON), then received_at."""
    if r.service_check is None:
        return (*_values(r), received_at)
    row: list[Any] = list(_values(r))
    row[_SC] = _SERVICE_CHECK.dump_json(r.service_check).decode()
    row.append(received_at)
    return tuple(row)


@dataclasses.dataclass(frozen=True)
class SentBatch(ResultBatch):
    """A batch as the controller accepted it: the wire batch and the identity that sent it.

    ``sent_by``: ``cert:<serial hex>`` (mutual TLS), ``token`` (the shared token of
    ``--insecure-http``), ``import`` (``netcheck-controller import``). Stored with each result.
    """

    sent_by: str = ""


def sent(batch: ResultBatch, by: str) -> SentBatch:
    """`batch` marked as sent by the identity `by` (a shallow copy, no validation)."""
    values = {f.name: getattr(batch, f.name) for f in dataclasses.fields(ResultBatch)}
    return SentBatch(**values, sent_by=by)


def _sent_by(b: ResultBatch) -> str:
    return b.sent_by if isinstance(b, SentBatch) else ""


def _result(row: Sequence[Any]) -> ProbeResult:
    values = list(row)
    if values[_SC] is not None:
        values[_SC] = _SERVICE_CHECK.validate_json(values[_SC])
    if values[_RST] is not None:
        values[_RST] = bool(values[_RST])
    return ProbeResult(*values)


def _write_group(
    c: sqlite3.Connection, batches: Sequence[ResultBatch], now: float, rejected: Sequence[str]
) -> None:
    """Every batch of a group, a few statements per group (not per batch, not per row)."""
    _RESULTS_UPSERT.run(c, [(*result_row(r, now), _sent_by(b)) for b in batches for r in b.results])
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


_AGENT_COLS = "role, host, address, mode, version, last_report"


def _agents(c: sqlite3.Connection) -> list[AgentSeen]:
    rows = c.execute(f"SELECT {_AGENT_COLS} FROM agents ORDER BY role, host")
    return [AgentSeen(*row) for row in rows]


def _results(c: sqlite3.Connection) -> list[ProbeResult]:
    return [_result(row) for row in c.execute(f"SELECT {_COLS} FROM results ORDER BY check_id")]


def _sent_by_check(c: sqlite3.Connection) -> dict[str, str]:
    return dict(c.execute("SELECT check_id, sent_by FROM results WHERE sent_by != ''"))


def _listeners(c: sqlite3.Connection) -> dict[str, tuple[ListenerStatus, ...]]:
    out: dict[str, list[ListenerStatus]] = defaultdict(list)
    for host, port, state, since, owner, error in c.execute(
        "SELECT host, port, state, since, owner, error FROM listeners ORDER BY host, port"
    ):
        out[host].append(ListenerStatus(port, state, since, owner, error))
    return {h: tuple(v) for h, v in out.items()}


def _peers(c: sqlite3.Connection) -> dict[str, tuple[PeerSeen, ...]]:
    out: dict[str, list[PeerSeen]] = defaultdict(list)
    for host, port, addr, at in c.execute(
        "SELECT host, port, src_address, at FROM peers ORDER BY host, port, at"
    ):
        out[host].append(PeerSeen(port, addr, at))
    return {h: tuple(v) for h, v in out.items()}


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
        """Open (and create or migrate, see :mod:`~netcheck.controller.schema`) the file.

        A file made by a newer netcheck is refused with
        :class:`~netcheck.controller.schema.SchemaError`, unchanged.

        ``background_checkpoints``: commits never copy the WAL back into the database file
        (SQLite's automatic checkpoint would do it inside whichever commit crosses 1,000
        pages, making that batch wait for a large write and fsync); the owner calls
        :meth:`checkpoint` from elsewhere instead (the server: a background task).
        """
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            refuse_newer(conn, str(path))  # before WAL mode: a refused file stays as it was
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            prepare(conn, str(path))
        except BaseException:
            conn.close()
            raise
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
        with self._lock:
            return _agents(self._conn)

    def agent(self, host: str) -> AgentSeen | None:
        rows = self._all(f"SELECT {_AGENT_COLS} FROM agents WHERE host = ?", (host,))
        return AgentSeen(*rows[0]) if rows else None

    def results(self) -> list[ProbeResult]:
        with self._lock:
            return _results(self._conn)

    def sent_by(self) -> dict[str, str]:
        """check id -> the identity that sent its stored result (results stored since v3)."""
        with self._lock:
            return _sent_by_check(self._conn)

    def listeners(self) -> dict[str, tuple[ListenerStatus, ...]]:
        with self._lock:
            return _listeners(self._conn)

    def peers(self) -> dict[str, tuple[PeerSeen, ...]]:
        with self._lock:
            return _peers(self._conn)

    def snapshot(self) -> Observed:
        """Everything evaluation reads, in one read transaction: one consistent moment."""
        with self._lock:
            c = self._conn
            c.execute("BEGIN")
            try:
                return Observed(
                    results=tuple(_results(c)),
                    listeners=MappingProxyType(_listeners(c)),
                    peers=MappingProxyType(_peers(c)),
                    agents=tuple(_agents(c)),
                    sent_by=MappingProxyType(_sent_by_check(c)),
                )
            finally:
                c.execute("COMMIT")

    def counters(self) -> dict[str, float]:
        return dict(self._all("SELECT name, value FROM counters"))

    def stats(self) -> dict[str, Any]:
        """Small facts for /healthz."""
        (n,) = self._all("SELECT count(*) FROM results")[0]
        (a,) = self._all("SELECT count(*) FROM agents")[0]
        return {"results": n, "agents": a}
