"""The on-disk queue of what waits for the controller: results and peer records.

A small SQLite file (standard library) in WAL mode with ``synchronous=FULL``: when
:meth:`Spool.append` returns, the records are committed and the commit is fsync'd, so they
survive a crash, ``kill -9`` or a power cut, and only then do they count as buffered. A
transaction cut short by a crash is rolled back when the file is next opened. The link
sends the oldest records and deletes exactly those the controller acknowledged (or refused
for good), so a crash between the answer and the delete sends them again (the controller
stores a re-sent result once).

The queue is bounded per kind: past the bound the oldest records of that kind are dropped,
and counted (:attr:`Spool.dropped`, kept in the file with the records). Results dropped and
not yet reported to the controller (``ResultBatch.dropped``) are kept there too.

Without a directory the same queue lives in memory (nothing survives a restart). The file
is held exclusively: a second agent on the same directory is refused with a clear error.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from netcheck.agent.errors import InputError

log = logging.getLogger(__name__)

Kind = Literal["result", "peer"]
KINDS: tuple[Kind, ...] = ("result", "peer")
FILENAME = "spool.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
                                  body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS queue_kind ON queue (kind, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_UNSENT = "unsent_dropped"


class Spool:
    """A bounded FIFO per kind of opaque records (bytes), durable when given a directory."""

    def __init__(self, directory: str | os.PathLike[str] | None, bound: int) -> None:
        self.bound = max(1, bound)
        self.path = Path(directory) / FILENAME if directory is not None else None
        self._db = self._connect()
        self.counts: Counter[str] = self._counts()
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        self.dropped: Counter[str] = Counter({k: int(meta.get(f"dropped:{k}", 0)) for k in KINDS})
        self.unsent_dropped = int(meta.get(_UNSENT, 0))
        if self.path is not None and (self.counts or self.unsent_dropped):
            log.info(
                "spool %s: %d results and %d peer records from before the restart",
                self.path,
                self.counts["result"],
                self.counts["peer"],
            )

    def _connect(self) -> sqlite3.Connection:
        if self.path is None:
            db = sqlite3.connect(":memory:", isolation_level=None)
            db.executescript(_SCHEMA)
            return db
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            return self._open_file(self.path)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise InputError(f"{self.path} is in use by another agent") from None
            raise InputError(f"cannot open the spool {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:  # not a database: keep it aside, start afresh
            aside = self.path.with_name(f"{FILENAME}.corrupt-{int(time.time())}")
            log.error("spool %s is unreadable (%s): moved to %s", self.path, exc, aside)
            self.path.replace(aside)
            return self._open_file(self.path)

    @staticmethod
    def _open_file(path: Path) -> sqlite3.Connection:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        db = sqlite3.connect(path, isolation_level=None, timeout=0.5)
        try:
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA cache_size=-512")  # KiB: the agent's memory budget is small
            db.executescript(_SCHEMA)  # takes the exclusive lock (a write)
            db.execute("PRAGMA quick_check").fetchall()
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        self._db.close()

    def count(self, kind: Kind) -> int:
        return int(self.counts[kind])

    def append(self, kind: Kind, bodies: Sequence[bytes]) -> int:
        """Store `bodies` at the tail, durably; drop the oldest of `kind` beyond the bound.
        Returns how many were dropped (counted in :attr:`dropped`)."""
        if not bodies:
            return 0
        excess = max(0, self.counts[kind] + len(bodies) - self.bound)
        fresh = bodies[max(0, len(bodies) - self.bound) :]  # more than the bound: the newest
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO queue (kind, body) VALUES (?, ?)", ((kind, b) for b in fresh)
            )
            if excess:
                db.execute(
                    "DELETE FROM queue WHERE id IN "
                    "(SELECT id FROM queue WHERE kind = ? ORDER BY id LIMIT ?)",
                    (kind, excess - (len(bodies) - len(fresh))),
                )
                self._count_dropped(db, kind, excess)
        self.counts[kind] += len(bodies) - excess
        return excess

    def oldest(self, kind: Kind, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` of the oldest records of `kind`: (id, body)."""
        rows = self._db.execute(
            "SELECT id, body FROM queue WHERE kind = ? ORDER BY id LIMIT ?", (kind, limit)
        ).fetchall()
        return [(int(i), bytes(b)) for i, b in rows]

    def delete(
        self, ids: Sequence[int], reported_dropped: int = 0, rejected: Counter[str] | None = None
    ) -> None:
        """Remove records the controller answered for; `reported_dropped` of the unsent drop
        count travelled with them, and `rejected` (by kind) were refused for good (dropped)."""
        with self._transaction() as db:
            db.executemany("DELETE FROM queue WHERE id = ?", ((i,) for i in ids))
            after = self._counts()
            self.unsent_dropped = max(0, self.unsent_dropped - reported_dropped)
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (_UNSENT, self.unsent_dropped),
            )
            for kind, n in (rejected or Counter()).items():
                if n:
                    self.dropped[kind] += n
                    db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        (f"dropped:{kind}", self.dropped[kind]),
                    )
        self.counts = after

    def _counts(self) -> Counter[str]:
        rows = self._db.execute("SELECT kind, count(*) FROM queue GROUP BY kind").fetchall()
        return Counter({str(k): int(n) for k, n in rows})

    def _count_dropped(self, db: sqlite3.Connection, kind: Kind, n: int) -> None:
        self.dropped[kind] += n
        rows = [(f"dropped:{kind}", self.dropped[kind])]
        if kind == "result":
            self.unsent_dropped += n
            rows.append((_UNSENT, self.unsent_dropped))
        db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", rows)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): the commit is the fsync."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
