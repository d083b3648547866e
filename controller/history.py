"""History: every change of a check's verdict, state or cause, and its outages.

Where changes are found: in the store's writer, inside the very transaction that stores the
results (:meth:`controller.store.Store.ingest_group`), so a change is durable exactly when
the result that caused it is acknowledged, and costs no second pass. The writer sees every
result in the order the store takes them: a result older than the stored one of its check
(a late or repeated one) is superseded there, and here too.

What is compared: each result is judged *alone* (:func:`controller.evaluate.judge_alone`:
the expectation of its check and what the source saw: state, service check, responder,
reset TTL), without the other end's evidence and without ageing. A change is a different
(verdict, state, cause) from the check's last recorded one, stamped with the result's
``started_at``. So the history is what the probes saw, judged by the expectation; the report
may refine a cause with the destination agent's evidence (a ``refused`` that its listener
shows to be a firewall's ``rejected``), and says ``stale`` when results stop coming, which is
no change in history (nothing was observed). The judgment of a result depends only on its
check's expectation and its raw observation (state, service-check outcome, responder, reset
TTL verdict), so only a result whose raw observation differs from the previous one is
judged again (and judgments are cached by that key): a steady result costs two dictionary
lookups in the writer's mirror of the last recorded state (:class:`Recorder`; updated in
place, and read again from the file after a transaction that failed).

When the spec changes (the writer is given new expected checks: :meth:`Recorder.reload`
through :meth:`controller.store.Store.expect`, at start and at every reload), the newest
stored result of every expected check is judged again under the new expectation; a
different judgment is a change at that result's time (the same rule as for a new result:
the newest observation, judged by today's expectation).
A check that first appears gets its first entry from its newest stored result; a check
that disappears keeps its history until retention. The same pass reads in what another
process wrote into the file (``netcheck-controller import`` beside a running server):
SQLite's ``data_version`` tells the writer, which then takes the newer results of the file
as observations before its own.

What is kept (tables of :mod:`controller.schema` version 7):

- ``history_checks``: per check, ``first_seen`` (its first result), ``last_change``, the last
  recorded verdict, state and cause, and ``since`` (since when it has had that verdict: for
  a failing check the start of its current outage).
- ``history_changes``: one row per change (``flap`` marks a change between pass and fail).
- ``outages``: each ended outage (a run of ``fail``), start and end; the current one is
  ``history_checks.since`` of a failing check (its end is not known yet).

Bounds (:mod:`controller.limits`): changes in all, changes per check, ended outages, a
retention for both, summaries of checks no longer expected; pruned in the writer's
transactions at most every ``PRUNE_EVERY_SECONDS``, or as soon as a tenth of the change
budget was written since. ``flaps`` counts the changes between pass and fail within the
policy's ``flap_window_seconds`` (changes still kept: at most ``HISTORY_ROWS_PER_CHECK``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from netcheck.agent.wire import ProbeResult
from netcheck.controller.evaluate import judge_alone
from netcheck.controller.expand import ExpectedCheck
from netcheck.controller.limits import (
    HISTORY_OLD_CHECKS,
    HISTORY_RETENTION_SECONDS,
    HISTORY_ROWS,
    HISTORY_ROWS_PER_CHECK,
    OUTAGE_ROWS,
)
from netcheck.controller.model import CheckHistory, Verdict
from netcheck.controller.sqlrows import Upsert

# A result's raw observation: state, service-check outcome, responder, reset TTL verdict. A
# change of it (and only of it) can change the result's judgment.
Raw = tuple[str, str | None, str | None, bool | None]
# The judgment alone depends on the check's expectation and on the raw observation with the
# responder reduced to "none, the destination, another address" (see evaluate.judge_alone):
# a handful of keys, so it is computed once per key, whatever the number of checks.
Judged = tuple[str, str, str | None, bool | None, bool | None]
JUDGED_CACHE = 10_000  # far more than the keys there are; emptied past it all the same
_FLAPPING = frozenset({"pass", "fail"})


def raw(r: ProbeResult) -> Raw:
    sc = r.service_check
    return (r.state, sc.outcome if sc is not None else None, r.responder, r.rst_from_firewall)


class Entry(NamedTuple):
    """The last recorded state of one check (and the raw observation it was judged from)."""

    key: Raw | None  # None: not known (loaded from the file), judge the next result
    verdict: str
    state: str
    cause: str
    since: float
    first_seen: float
    last_change: float


@dataclass
class Staged:
    """What one transaction writes. The recorder's mirror already holds it (a steady result
    then costs two dictionary lookups); a transaction that fails marks the mirror stale
    (:meth:`Recorder.invalidate`), and the next one reads it again from the file."""

    last: dict[str, Entry] = field(default_factory=dict)  # the changed checks' new state
    changes: list[tuple[str, float, str, str, str, int]] = field(default_factory=list)
    outages: list[tuple[str, float, float]] = field(default_factory=list)
    dv: int | None = None


_INSERT_CHANGES = Upsert(
    "INSERT INTO history_changes (check_id, at, verdict, state, cause, flap)", 6
)
_UPSERT_CHECKS = Upsert(
    "INSERT INTO history_checks (check_id, first_seen, last_change, verdict, state, cause, since)",
    7,
    """ON CONFLICT (check_id) DO UPDATE SET first_seen = excluded.first_seen,
    last_change = excluded.last_change, verdict = excluded.verdict, state = excluded.state,
    cause = excluded.cause, since = excluded.since""",
)
_INSERT_OUTAGES = Upsert("INSERT INTO outages (check_id, start_at, end_at)", 3)
_SUMMARIES = (
    "SELECT check_id, first_seen, last_change, verdict, state, cause, since FROM history_checks"
)


class Recorder:
    """The writer's side of history: the expected checks, and the last recorded state of each
    (a mirror of ``history_checks`` and of the stored results' times, so a steady result needs
    no read). Used under the store's write lock only."""

    def __init__(self) -> None:
        self._expect: dict[str, ExpectedCheck] = {}
        self._seen: dict[str, float] = {}  # check id -> started_at of its stored result
        self._last: dict[str, Entry] = {}
        self._judged: dict[Judged, tuple[str, str]] = {}
        self._dv = -1  # the file's data_version as last seen (another writer changes it)
        self.written = 0  # changes written since the last prune
        self.stale = False  # a transaction failed: read the mirror again before the next

    @property
    def expected(self) -> Mapping[str, ExpectedCheck]:
        return self._expect

    def _judge(self, check: ExpectedCheck, r: ProbeResult, key: Raw) -> tuple[str, str]:
        responder = key[2]
        same = None if responder is None else responder == check.spec.dst_address
        k = (check.spec.expect, key[0], key[1], same, key[3])
        got = self._judged.get(k)
        if got is None:
            row = judge_alone(check, r)
            got = (row.verdict, row.cause)
            if len(self._judged) >= JUDGED_CACHE:
                self._judged.clear()
            self._judged[k] = got
        return got

    def _step(
        self, s: Staged, check: ExpectedCheck, r: ProbeResult, key: Raw, e: Entry | None
    ) -> None:
        """The newest result of its check, whose raw observation differs from the last one
        judged (``e``: the check's last recorded state): record a change if it makes one."""
        cid = r.check_id
        verdict, cause = self._judge(check, r, key)
        t = r.started_at
        if e is None:
            self._last[cid] = s.last[cid] = Entry(key, verdict, r.state, cause, t, t, t)
            s.changes.append((cid, t, verdict, r.state, cause, 0))
            return
        if (verdict, r.state, cause) == (e.verdict, e.state, e.cause):
            self._last[cid] = e._replace(key=key)
            return
        t = max(t, e.last_change)  # never before the last change (a result re-judged)
        old = e.verdict
        flap = int(verdict != old and verdict in _FLAPPING and old in _FLAPPING)
        since = e.since if verdict == e.verdict else t
        if e.verdict == "fail" and verdict != "fail":
            s.outages.append((cid, e.since, t))
        self._last[cid] = s.last[cid] = Entry(key, verdict, r.state, cause, since, e.first_seen, t)
        s.changes.append((cid, t, verdict, r.state, cause, flap))

    def observe(self, results: Iterable[ProbeResult], into: Staged | None = None) -> Staged:
        """The changes a group of results makes (in the order the store writes them), added
        to ``into`` when given (staged earlier in the same transaction)."""
        s = into if into is not None else Staged()
        expect, seen, last, step = self._expect, self._seen, self._last, self._step
        for r in results:
            cid, t = r.check_id, r.started_at
            before = seen.get(cid)
            if before is not None and t <= before:
                continue  # superseded: the store keeps the newer one
            sc = r.service_check
            key = (r.state, None if sc is None else sc.outcome, r.responder, r.rst_from_firewall)
            e = last.get(cid)
            if e is not None and e.key == key:
                seen[cid] = t
                continue  # the same observation as the last one judged
            check = expect.get(cid)
            if check is None:
                continue  # not expected: no history
            seen[cid] = t
            step(s, check, r, key, e)
        return s

    def invalidate(self) -> None:
        """The transaction that staged changes failed: the mirror is read again."""
        self.stale = True

    def apply(self, s: Staged) -> None:
        """After the transaction holding ``s`` committed."""
        self.written += len(s.changes)
        if s.dv is not None:
            self._dv = s.dv

    # -- in the transaction ------------------------------------------------------------------

    def foreign(self, c: sqlite3.Connection) -> bool:
        """Whether another connection committed to the file since this one last looked."""
        (dv,) = c.execute("PRAGMA data_version").fetchone()
        return int(dv) != self._dv

    def reload(
        self,
        c: sqlite3.Connection,
        results: Sequence[ProbeResult],
        checks: Iterable[ExpectedCheck] | None = None,
    ) -> Staged:
        """Read the file's summaries and judge every expected check's stored result again
        (``results``, the newest per check; ``checks``: new expectations, else the current)."""
        if checks is not None:
            self._expect = {ch.spec.check_id: ch for ch in checks}
            self._judged.clear()
        self._last = {
            cid: Entry(None, verdict, state, cause, since, first, last)
            for cid, first, last, verdict, state, cause, since in c.execute(_SUMMARIES)
        }
        self._seen = {}
        self.stale = False
        s = Staged()
        for r in results:
            check = self._expect.get(r.check_id)
            if check is not None:
                self._seen[r.check_id] = r.started_at
                self._step(s, check, r, raw(r), self._last.get(r.check_id))
        (dv,) = c.execute("PRAGMA data_version").fetchone()
        s.dv = int(dv)
        return s

    def newer(self, c: sqlite3.Connection) -> list[str]:
        """Expected checks whose stored result is newer than this recorder saw (written by
        another process)."""
        seen, expect = self._seen, self._expect
        return [
            cid
            for cid, t in c.execute("SELECT check_id, started_at FROM results")
            if cid in expect and (cid not in seen or t > seen[cid])
        ]

    def catch_up(self, c: sqlite3.Connection, results: Iterable[ProbeResult]) -> Staged:
        """The stored results another process wrote (``results``, oldest first), as
        observations."""
        s = self.observe(results)
        (dv,) = c.execute("PRAGMA data_version").fetchone()
        s.dv = int(dv)
        return s


def write(c: sqlite3.Connection, s: Staged) -> None:
    """Write what was staged (in the caller's transaction): a few statements in all."""
    _INSERT_CHANGES.run(c, s.changes)
    rows = [
        (cid, e.first_seen, e.last_change, e.verdict, e.state, e.cause, e.since)
        for cid, e in s.last.items()
    ]
    _UPSERT_CHECKS.run(c, rows)
    _INSERT_OUTAGES.run(c, s.outages)


_TRIM_PER_CHECK = """
DELETE FROM history_changes WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (PARTITION BY check_id ORDER BY id DESC) AS n
        FROM history_changes WHERE check_id IN (
            SELECT check_id FROM history_changes GROUP BY check_id HAVING count(*) > ?))
    WHERE n > ?)
"""


def prune(c: sqlite3.Connection, now: float, expected: bool) -> int:
    """Apply the bounds (the module doc); the number of rows dropped. ``expected``: the
    connection's ``temp.expected_ids`` holds the expected check ids."""
    before = c.total_changes
    horizon = now - HISTORY_RETENTION_SECONDS
    c.execute("DELETE FROM history_changes WHERE at < ?", (horizon,))
    c.execute(
        "DELETE FROM history_changes WHERE id <= (SELECT max(id) FROM history_changes) - ?",
        (HISTORY_ROWS,),
    )
    c.execute(_TRIM_PER_CHECK, (HISTORY_ROWS_PER_CHECK, HISTORY_ROWS_PER_CHECK))
    c.execute("DELETE FROM outages WHERE end_at < ?", (horizon,))
    c.execute("DELETE FROM outages WHERE id <= (SELECT max(id) FROM outages) - ?", (OUTAGE_ROWS,))
    if expected:
        old = "SELECT check_id FROM history_checks WHERE check_id NOT IN temp.expected_ids"
        c.execute(
            f"DELETE FROM history_checks WHERE last_change < ? AND check_id IN ({old})",
            (horizon,),
        )
        c.execute(
            f"""DELETE FROM history_checks WHERE check_id IN ({old}
                ORDER BY last_change DESC LIMIT -1 OFFSET ?)""",
            (HISTORY_OLD_CHECKS,),
        )
    return c.total_changes - before


# -- reads ------------------------------------------------------------------------------------


def summaries(
    c: sqlite3.Connection, now: float | None = None, flap_window: float | None = None
) -> dict[str, CheckHistory]:
    """Every check's history in brief; ``flaps`` counted within ``flap_window`` seconds
    before ``now`` (0 unless both are given)."""
    flaps: dict[str, int] = {}
    if now is not None and flap_window is not None:
        flaps = dict(
            c.execute(
                "SELECT check_id, count(*) FROM history_changes WHERE flap = 1 AND at > ? "
                "GROUP BY check_id",
                (now - flap_window,),
            )
        )
    verdict: Verdict
    out: dict[str, CheckHistory] = {}
    for cid, first, last, verdict, _state, _cause, since in c.execute(_SUMMARIES):
        out[cid] = CheckHistory(first, last, verdict, since, flaps.get(cid, 0))
    return out


@dataclass(frozen=True)
class Query:
    """``GET /api/v1/history``: one check, or one interaction's checks; ``since`` (seconds
    since the epoch, or None) and at most ``limit`` changes (the newest) and outages."""

    check: str | None
    interaction: int | None
    since: float | None
    limit: int


def _where(q: Query) -> tuple[str, list[Any]]:
    if q.check is not None:
        return "check_id = ?", [q.check]
    # A check id starts with its interaction: "4:pio-1>vc:443" (agent.wire.check_id).
    return "check_id >= ? AND check_id < ?", [f"{q.interaction}:", f"{q.interaction};"]


def changes(c: sqlite3.Connection, q: Query) -> list[tuple[float, str, str, str, str]]:
    """(at, check id, verdict, state, cause), oldest first: the newest ``limit`` since."""
    where, args = _where(q)
    if q.since is not None:
        where += " AND at >= ?"
        args.append(q.since)
    rows = c.execute(
        f"SELECT at, check_id, verdict, state, cause FROM history_changes WHERE {where} "
        "ORDER BY at DESC, id DESC LIMIT ?",
        (*args, q.limit),
    ).fetchall()
    return rows[::-1]


def outages(c: sqlite3.Connection, q: Query) -> list[tuple[str, float, float | None]]:
    """(check id, start, end or None for the current one), by start: the newest ``limit``
    that ended at or after ``since`` (or have not ended)."""
    where, args = _where(q)
    ended_where, ended_args = where, list(args)
    if q.since is not None:
        ended_where += " AND end_at >= ?"
        ended_args.append(q.since)
    current = c.execute(
        f"SELECT check_id, since, NULL FROM history_checks WHERE {where} AND verdict = 'fail'",
        args,
    ).fetchall()
    ended = c.execute(
        f"SELECT check_id, start_at, end_at FROM outages WHERE {ended_where} "
        "ORDER BY start_at DESC, id DESC LIMIT ?",
        (*ended_args, q.limit),
    ).fetchall()
    rows = sorted([*ended, *current], key=lambda o: (o[1], o[0]))
    return rows[-q.limit :]


def known(c: sqlite3.Connection, q: Query) -> bool:
    """Whether history has anything of the query's check or interaction."""
    where, args = _where(q)
    return (
        c.execute(f"SELECT 1 FROM history_checks WHERE {where} LIMIT 1", args).fetchone()
        is not None
    )
