"""SQLite storage: agents, the newest result per check, listeners, peers, counters.

Durability: WAL mode with ``synchronous=FULL``, so every commit is fsynced to the WAL
before it returns. :meth:`Store.ingest_group` writes any number of batches (and rejection
counts) in ONE transaction; the HTTP API answers each agent only after the transaction that
holds its batch committed (acknowledged = committed, and on disk). One fsync per group, not
per batch nor per result: see :mod:`controller.writer`.

Results: one row per check id, the newest by ``started_at`` (an older result arriving late, or
the same result sent again, never overwrites what is stored), one column per
:class:`~agent.wire.ProbeResult` field (the nested ``service_check`` as JSON) and ``sent_by``,
the identity that sent it (a :class:`SentBatch`; see :mod:`controller.schema` version 3),
written as tuples in multi-row statements: no JSON is re-serialised per result. The tables are
written out in :mod:`controller.schema`, with ``PRAGMA user_version`` and numbered migrations
(a wire field added later needs one). The newest result is what evaluation reads; every
change of a check's verdict, state or cause is recorded in the same transaction that stores
the result causing it, once the store knows the expected checks (:meth:`Store.expect`;
:mod:`controller.history` says how, and what is kept, bounded). Results
whose check id matches no expected check (:meth:`Store.set_expected`) are kept like any other
(evaluation lists them as unexpected), but bounded: at most ``limits.UNEXPECTED_ROWS`` rows
(the oldest received dropped first) and none older than
``limits.UNEXPECTED_RETENTION_SECONDS``, each drop counted.

Acknowledged means committed: the transaction holding the batch is on disk, and in it every
result of the batch was compared with the stored result of its check; the newer by
``started_at`` is what the store holds. A result older than the stored one (or a re-send of
it) is acknowledged as superseded, not lost: the store already holds newer news of that
check. The controller refuses times more than ``limits.FUTURE_SECONDS`` ahead of its clock,
so no result stays "the newest" by a skewed clock for longer than that.

Listeners: each batch carries the agent's whole listener picture. The store keeps the newest
status per (host, port), ``closed`` ones included with their ``since``, ordered by the
batch's ``sent_at`` (a late, older batch never overwrites a newer status); ports a newer
picture no longer mentions are removed (one pass over the host's rows: after the upsert,
the ports of the newest picture carry its time, the others an older one). Peers seen are bounded to
:data:`PEERS_PER_PORT` addresses per host and port (the most recent ones).

Counters (``results_ingested``: results stored, a re-send counted once; ``batches_ingested``,
``rejected:<reason>``, ``dropped:<role>:<host>``, ``unexpected_dropped``) are
persisted in the same transactions, so the ``_total`` metrics survive a restart.

:attr:`Store.version` grows by one at every commit, so readers can cache what they derive
(not the schema's ``user_version``). :meth:`Store.snapshot` reads what evaluation needs in
one read transaction. Writes go through one connection behind a lock; reads (snapshot,
counters, stats, ...) through a second, read-only one (``mode=ro``) behind its own lock, so
a reader never waits for a commit (WAL: it sees the last committed state) and a long write
never holds up ``/healthz``, the page or ``/metrics``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import operator
import sqlite3
import threading
import urllib.parse
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
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
from netcheck.controller import history
from netcheck.controller.expand import ExpectedCheck
from netcheck.controller.facts import GuestFacts, read_facts, write_facts
from netcheck.controller.limits import (
    HISTORY_ROWS,
    PRUNE_EVERY_SECONDS,
    UNEXPECTED_RETENTION_SECONDS,
    UNEXPECTED_ROWS,
)
from netcheck.controller.model import AgentSeen, Observed
from netcheck.controller.pathstore import read_paths
from netcheck.controller.schema import RESULT_COLUMNS, prepare, refuse_newer
from netcheck.controller.sqlrows import Upsert as _Upsert

PEERS_PER_PORT = 32

_FIELDS = RESULT_COLUMNS
if tuple(f.name for f in dataclasses.fields(ProbeResult)) != _FIELDS:
    raise RuntimeError("schema.RESULT_COLUMNS and the fields of wire.ProbeResult differ")
_SC = _FIELDS.index("service_check")
_RST = _FIELDS.index("rst_from_firewall")
_values = operator.attrgetter(*_FIELDS)
_COLS = ", ".join(_FIELDS)


_RESULTS_UPSERT = _Upsert(
    f"INSERT INTO results ({_COLS}, received_at, sent_by)",
    len(_FIELDS) + 2,
    "ON CONFLICT (check_id) DO UPDATE SET "
    + ", ".join(f"{n} = excluded.{n}" for n in (*_FIELDS[1:], "received_at", "sent_by"))
    + " WHERE excluded.started_at > results.started_at",
)
_LISTENERS_UPSERT = _Upsert(
    "INSERT INTO listeners (host, port, state, since, owner, error, reported_at)",
    7,
    """ON CONFLICT (host, port) DO UPDATE SET state = excluded.state, since = excluded.since,
    owner = excluded.owner, error = excluded.error, reported_at = excluded.reported_at
    WHERE excluded.reported_at >= listeners.reported_at""",
)
# Ports a newer picture of the host no longer mentions: after the upsert, every port of the
# host's newest picture carries that picture's time, so the others are exactly the older
# rows (a range scan of the host's rows, not a list search per row: a 60,000-port picture
# took 83 s with ``port NOT IN (json_each(...))``). Parameter: JSON [[host, at], ...].
_DROP_LISTENERS = """
DELETE FROM listeners WHERE rowid IN (
    SELECT l.rowid FROM json_each(?) AS p JOIN listeners AS l ON l.host = p.value ->> 0
    WHERE l.reported_at < p.value ->> 1)
"""
_PEERS_UPSERT = _Upsert(
    "INSERT INTO peers (host, port, src_address, at, how, ttl)",
    6,
    "ON CONFLICT (host, port, src_address, how) DO UPDATE SET "
    "ttl = CASE WHEN excluded.at >= at THEN excluded.ttl ELSE ttl END, "
    "at = max(at, excluded.at)",
)
_TRIM_PEERS = """
DELETE FROM peers WHERE host = ? AND port = ? AND rowid NOT IN (
    SELECT rowid FROM peers WHERE host = ? AND port = ? ORDER BY at DESC LIMIT ?)
"""
_BUMPS = _Upsert(
    "INSERT INTO counters (name, value)",
    2,
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
)
_LAST_REPORT = "UPDATE agents SET last_report = ? WHERE host IN (SELECT value FROM json_each(?))"
_PEERS_UNTIL = "UPDATE agents SET peers_until = MAX(COALESCE(peers_until, 0), ?2) WHERE host = ?1"

_SERVICE_CHECK = TypeAdapter(ServiceCheck)

# Unexpected results: a temporary table (this connection only) of the expected check ids.
_EXPECTED_TABLE = "CREATE TEMP TABLE IF NOT EXISTS expected_ids (check_id TEXT PRIMARY KEY)"
_UNEXPECTED = "SELECT check_id FROM results WHERE check_id NOT IN temp.expected_ids"
_TRIM_UNEXPECTED = f"""
DELETE FROM results WHERE check_id IN (
    {_UNEXPECTED} ORDER BY received_at DESC, started_at DESC LIMIT -1 OFFSET ?)
"""
_EXPIRE_UNEXPECTED = f"DELETE FROM results WHERE received_at < ? AND check_id IN ({_UNEXPECTED})"


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
) -> int:
    """Every batch of a group, a few statements per group (not per batch, not per row).

    Returns the number of results stored (new, or newer than the stored one)."""
    before = c.total_changes
    _RESULTS_UPSERT.run(c, [(*result_row(r, now), _sent_by(b)) for b in batches for r in b.results])
    stored = c.total_changes - before
    pictures: dict[str, float] = {}  # host -> the time of its newest listener picture
    rows: list[tuple[Any, ...]] = []
    for b in batches:
        if b.listeners:
            at = b.sent_at or now
            rows.extend(
                (b.host, s.port, s.state, s.since, s.owner, s.error, at) for s in b.listeners
            )
            pictures[b.host] = max(at, pictures.get(b.host, at))
    _LISTENERS_UPSERT.run(c, rows)
    if pictures:
        c.execute(_DROP_LISTENERS, (json.dumps(list(pictures.items())),))
    peers = [(b.host, p.port, p.src_address, p.at, p.how, p.ttl) for b in batches for p in b.peers]
    _PEERS_UPSERT.run(c, peers)
    for host, port in sorted({(p[0], p[1]) for p in peers}):
        c.execute(_TRIM_PEERS, (host, port, host, port, PEERS_PER_PORT))
    if batches:
        c.execute(_LAST_REPORT, (now, json.dumps(sorted({b.host for b in batches}))))
    until: dict[str, float] = {}  # host -> up to when its peers are all reported
    for b in batches:
        if b.peers_until:
            until[b.host] = max(b.peers_until, until.get(b.host, 0.0))
    c.executemany(_PEERS_UNTIL, sorted(until.items()))
    bumps: dict[str, float] = defaultdict(float)
    if batches:
        bumps["results_ingested"] = stored
        bumps["batches_ingested"] = len(batches)
    for b in batches:
        if b.dropped:
            bumps[f"dropped:{b.role}:{b.host}"] += b.dropped
    for reason in rejected:
        bumps[f"rejected:{reason}"] += 1
    _BUMPS.run(c, list(bumps.items()))
    write_facts(c, batches, now)
    return stored


def _bound_unexpected(c: sqlite3.Connection, rows: int, expire_before: float | None) -> int:
    """Drop unexpected results beyond ``rows`` (the oldest received first) and, when
    ``expire_before`` is given, those received before it; counted. The number dropped."""
    before = c.total_changes
    c.execute(_TRIM_UNEXPECTED, (rows,))
    if expire_before is not None:
        c.execute(_EXPIRE_UNEXPECTED, (expire_before,))
    dropped = c.total_changes - before
    if dropped:
        _BUMPS.run(c, [("unexpected_dropped", dropped)])
    return dropped


_AGENT_COLS = "role, host, address, mode, version, last_report, peers_until"


def _agents(c: sqlite3.Connection) -> list[AgentSeen]:
    rows = c.execute(f"SELECT {_AGENT_COLS} FROM agents ORDER BY role, host")
    return [AgentSeen(*row) for row in rows]


def _results(c: sqlite3.Connection) -> list[ProbeResult]:
    return [_result(row) for row in c.execute(f"SELECT {_COLS} FROM results ORDER BY check_id")]


def _results_of(c: sqlite3.Connection, check_ids: Sequence[str]) -> list[ProbeResult]:
    """The stored results of these checks, oldest first."""
    rows = c.execute(
        f"SELECT {_COLS} FROM results WHERE check_id IN (SELECT value FROM json_each(?)) "
        "ORDER BY started_at, check_id",
        (json.dumps(list(check_ids)),),
    )
    return [_result(row) for row in rows]


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
    for host, port, addr, at, how, ttl in c.execute(
        "SELECT host, port, src_address, at, how, ttl FROM peers ORDER BY host, port, at"
    ):
        out[host].append(PeerSeen(port, addr, at, how, ttl))
    return {h: tuple(v) for h, v in out.items()}


@contextlib.contextmanager
def _invalidating(rec: history.Recorder | None) -> Iterator[None]:
    """A transaction that fails leaves history's mirror stale (read again next time)."""
    try:
        yield
    except BaseException:
        if rec is not None:
            rec.invalidate()
        raise


class Store:
    """One SQLite file. Open with :meth:`open`; every method is one short transaction."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path
        self.version = 0  # bumped after every commit
        self._ckpt: sqlite3.Connection | None = None
        self._ckpt_lock = threading.Lock()
        # Two read-only connections, each for one read at a time: one for evaluation's long
        # reads (a snapshot of a big site takes seconds), one for small ones (counters, the
        # health figures) that a scrape or /healthz must not queue behind a snapshot.
        self._readers: dict[bool, sqlite3.Connection] = {}
        self._rlocks = {False: threading.Lock(), True: threading.Lock()}
        self._expected: frozenset[str] | None = None
        self._expired_at = 0.0  # when unexpected results were last expired
        self._recorder: history.Recorder | None = None  # from the first expect()
        self._history_pruned = 0.0  # when history was last pruned

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

    @contextlib.contextmanager
    def _reading(self, small: bool = False) -> Iterator[sqlite3.Connection]:
        """A read-only connection (opened at first use), for one read at a time: the one for
        ``small`` reads, or the one for the others.

        A database in memory has no second connection: reads share the writer's."""
        if self.path == ":memory:":
            with self._lock:
                yield self._conn
            return
        with self._rlocks[small]:
            conn = self._readers.get(small)
            if conn is None:
                uri = "file:" + urllib.parse.quote(str(Path(self.path).resolve())) + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
                conn.execute("PRAGMA busy_timeout=5000")
                self._readers[small] = conn
            yield conn

    def close(self) -> None:
        with self._ckpt_lock:
            if self._ckpt is not None:
                self._ckpt.close()
                self._ckpt = None
        for small, lock in self._rlocks.items():
            with lock:
                conn = self._readers.pop(small, None)
                if conn is not None:
                    conn.close()
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

    def set_expected(self, check_ids: Iterable[str]) -> None:
        """The expected check ids: results of other ids are bounded (see the module doc)."""
        ids = frozenset(check_ids)
        with self._lock:
            c = self._conn
            c.execute(_EXPECTED_TABLE)
            c.execute("BEGIN")
            try:
                c.execute("DELETE FROM temp.expected_ids")
                c.executemany("INSERT INTO temp.expected_ids VALUES (?)", ((i,) for i in ids))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            self._expected = ids

    def expect(self, checks: Iterable[ExpectedCheck]) -> None:
        """The expected checks (at start, and again whenever the spec or inventory changes):
        results of other ids are bounded, and history is recorded from now on. Every expected
        check's stored result is judged again under these expectations, in one transaction
        (a different judgment is a change: :mod:`controller.history`)."""
        checks = tuple(checks)
        ids = frozenset(ch.spec.check_id for ch in checks)
        with self._lock:
            c = self._conn
            c.execute(_EXPECTED_TABLE)
            rec = self._recorder or history.Recorder()
            c.execute("BEGIN IMMEDIATE")
            try:  # the mirror is read again after a failure (_invalidating)
                c.execute("DELETE FROM temp.expected_ids")
                c.executemany("INSERT INTO temp.expected_ids VALUES (?)", ((i,) for i in ids))
                staged = rec.reload(c, _results(c), checks)
                history.write(c, staged)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                rec.invalidate()
                raise
            rec.apply(staged)
            self._recorder, self._expected = rec, ids
        if staged.changes:  # readers' caches: history changed
            self.version += 1

    def ingest_group(
        self, batches: Sequence[ResultBatch], now: float, rejected: Sequence[str] = ()
    ) -> list[int]:
        """Write every batch (and count every rejection reason) in ONE transaction.

        Returns the number of results accepted (acknowledged) per batch. Any error rolls the
        whole group back: nothing of it is kept.
        """
        rec, staged = self._recorder, None
        with self._lock, self._conn, _invalidating(rec):
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            if rec is not None and batches:
                # Results another process wrote first (import), then the group's own.
                if rec.stale:
                    staged = rec.reload(c, _results(c))
                elif rec.foreign(c):
                    staged = rec.catch_up(c, _results_of(c, rec.newer(c)))
                staged = rec.observe((r for b in batches for r in b.results), staged)
            _write_group(c, batches, now, rejected)
            if rec is not None and staged is not None:
                history.write(c, staged)
                due = now - self._history_pruned >= PRUNE_EVERY_SECONDS
                if due or rec.written >= HISTORY_ROWS // 10:
                    history.prune(c, now, self._expected is not None)
                    self._history_pruned, rec.written = now, 0
            if self._expected is not None and batches:
                expire = now - self._expired_at >= PRUNE_EVERY_SECONDS
                if expire or any(
                    r.check_id not in self._expected for b in batches for r in b.results
                ):
                    horizon = now - UNEXPECTED_RETENTION_SECONDS if expire else None
                    _bound_unexpected(c, UNEXPECTED_ROWS, horizon)
                    if expire:
                        self._expired_at = now
        if rec is not None and staged is not None:
            rec.apply(staged)
        self.version += 1
        return [len(b.results) for b in batches]

    def count_rejected(self, reason: str) -> None:
        self.ingest_group([], 0.0, [reason])

    # -- reads ----------------------------------------------------------------------------

    def _all(self, sql: str, args: tuple[Any, ...] = (), small: bool = False) -> list[Any]:
        with self._reading(small) as c:
            return c.execute(sql, args).fetchall()

    def agents(self) -> list[AgentSeen]:
        with self._reading() as c:
            return _agents(c)

    def agent(self, host: str) -> AgentSeen | None:
        rows = self._all(f"SELECT {_AGENT_COLS} FROM agents WHERE host = ?", (host,))
        return AgentSeen(*rows[0]) if rows else None

    def results(self) -> list[ProbeResult]:
        with self._reading() as c:
            return _results(c)

    def sent_by(self) -> dict[str, str]:
        """check id -> the identity that sent its stored result (results stored since v3)."""
        with self._reading() as c:
            return _sent_by_check(c)

    def listeners(self) -> dict[str, tuple[ListenerStatus, ...]]:
        with self._reading() as c:
            return _listeners(c)

    def peers(self) -> dict[str, tuple[PeerSeen, ...]]:
        with self._reading() as c:
            return _peers(c)

    def snapshot(self, now: float | None = None, flap_window: float | None = None) -> Observed:
        """Everything evaluation reads, in one read transaction: one consistent moment.

        History's flap counts cover ``flap_window`` seconds before ``now`` (none without)."""
        with self._reading() as c:
            c.execute("BEGIN")
            try:
                return Observed(
                    results=tuple(_results(c)),
                    listeners=MappingProxyType(_listeners(c)),
                    peers=MappingProxyType(_peers(c)),
                    agents=tuple(_agents(c)),
                    sent_by=MappingProxyType(_sent_by_check(c)),
                    history=MappingProxyType(history.summaries(c, now, flap_window)),
                    guest_facts=MappingProxyType(read_facts(c)),
                    paths=MappingProxyType(read_paths(c)),
                )
            finally:
                c.execute("COMMIT")

    def history_of(
        self, q: history.Query
    ) -> tuple[list[tuple[float, str, str, str, str]], list[tuple[str, float, float | None]]]:
        """The changes and outages ``q`` asks for (``GET /api/v1/history``), one moment."""
        with self._reading() as c:
            c.execute("BEGIN")
            try:
                return history.changes(c, q), history.outages(c, q)
            finally:
                c.execute("COMMIT")

    def history_knows(self, q: history.Query) -> bool:
        """Whether the query's check (or interaction) is expected or has history."""
        ids = self._expected or frozenset()
        if q.check is not None and q.check in ids:
            return True
        prefix = f"{q.interaction}:"
        if q.check is None and any(i.startswith(prefix) for i in ids):
            return True
        with self._reading() as c:
            return history.known(c, q)

    def guest_facts(self) -> dict[str, GuestFacts]:
        """host -> the newest facts its guest agent reported (controller/facts.py)."""
        with self._reading() as c:
            return read_facts(c)

    def counters(self) -> dict[str, float]:
        return dict(self._all("SELECT name, value FROM counters", small=True))

    def ping(self) -> None:
        """One read through the read-only connection (readiness); sqlite3.Error if it fails."""
        self._all("SELECT 1 FROM counters LIMIT 1", small=True)

    def stats(self) -> dict[str, Any]:
        """Small facts for /healthz."""
        (n,) = self._all("SELECT count(*) FROM results", small=True)[0]
        (a,) = self._all("SELECT count(*) FROM agents", small=True)[0]
        return {"results": n, "agents": a}
