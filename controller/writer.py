"""Group commit: one writer task puts every batch waiting at that moment in ONE transaction.

Handlers validate a batch first (a bad batch is refused before it joins a group and never
affects the others), then :meth:`GroupWriter.ingest` queues it and waits. The writer task
takes everything queued, writes it with :meth:`Store.ingest_group` in a worker thread (the
only thread hop, shared by the whole group), and answers each waiter once that transaction
committed: acknowledged = committed. While a commit is in flight, new batches queue up and
go together in the next one, so the fsync is paid once per group, not once per batch.
If a group's transaction fails (SQLite rolled it back), each of its batches is written again
alone, so one batch that cannot be stored never fails the others: only its own waiter gets
the error, :class:`Unstorable` when the data itself could not be written (the handler
answers 400: the agent must not send it again), the database's exception otherwise (500:
send it again). Rejection counts ride along in the same groups.

Given the expected checks (``expected``, and :meth:`GroupWriter.expect` at every reload), the
store records history in the same transactions (:mod:`controller.history`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from netcheck.agent.wire import ResultBatch
from netcheck.controller.errors import NetcheckError
from netcheck.controller.expand import ExpectedCheck
from netcheck.controller.store import Store

log = logging.getLogger("netcheck.controller")

# At most this many results per transaction; the rest waits for the next one.
GROUP_RESULTS = 20_000


# Errors of the data, not of the database: raised while binding a value (an integer beyond
# 64 bits, a string that is not UTF-8, an unsupported type) or by SQLite's type checks.
_DATA_ERRORS = (OverflowError, ValueError, TypeError, sqlite3.DataError, sqlite3.ProgrammingError)


class Unstorable(NetcheckError):
    """A batch that failed alone for what it holds: sending it again cannot help."""


@dataclass
class _Waiting:
    batch: ResultBatch | None  # None: a rejection count
    reason: str
    done: asyncio.Future[int]


class GroupWriter:
    """The store's single writer for results and rejections (start, then close)."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        expected_ids: Iterable[str] | None = None,
        expected: Iterable[ExpectedCheck] | None = None,
    ) -> None:
        self._store = store
        # The expected check ids: results of others are bounded (Store.set_expected).
        self._expected = None if expected_ids is None else frozenset(expected_ids)
        # The expected checks themselves: the same, and history (Store.expect).
        self._checks = None if expected is None else tuple(expected)
        self._clock = clock
        self._queue: list[_Waiting] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.groups = 0  # transactions committed (for tests and logs)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-writer")

    @property
    def running(self) -> bool:
        """Started, not closing, and its task alive (readiness)."""
        return self._task is not None and not self._task.done() and not self._closing

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def expect(self, checks: Iterable[ExpectedCheck]) -> None:
        """New expected checks (a reload): bounds and history follow them from now on."""
        await asyncio.to_thread(self._store.expect, tuple(checks))

    async def ingest(self, batch: ResultBatch) -> int:
        """Queue a validated batch; the number of results once its transaction committed."""
        return await self._submit(_Waiting(batch, "", self._future()))

    async def count_rejected(self, reason: str) -> None:
        await self._submit(_Waiting(None, reason, self._future()))

    @staticmethod
    def _future() -> asyncio.Future[int]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, item: _Waiting) -> int:
        if self._closing or self._task is None:
            raise RuntimeError("the store writer is not running")
        self._queue.append(item)
        self._wake.set()
        # shield: a handler cancelled while waiting must not cancel the shared future.
        return await asyncio.shield(item.done)

    def _take(self) -> list[_Waiting]:
        """The next group: the queue's head, up to :data:`GROUP_RESULTS` results (at least one)."""
        cut, size = len(self._queue), 0
        for i, item in enumerate(self._queue):
            size += len(item.batch.results) if item.batch else 0
            if size >= GROUP_RESULTS:
                cut = i + 1
                break
        group, self._queue = self._queue[:cut], self._queue[cut:]
        return group

    async def _run(self) -> None:
        if self._checks is not None:
            await asyncio.to_thread(self._store.expect, self._checks)
        elif self._expected is not None:
            await asyncio.to_thread(self._store.set_expected, self._expected)
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._commit(self._take())
            if self._closing:
                return

    async def _commit(self, group: list[_Waiting]) -> None:
        batches = [w.batch for w in group if w.batch is not None]
        reasons = [w.reason for w in group if w.batch is None]
        try:
            counts = await asyncio.to_thread(
                self._store.ingest_group, batches, self._clock(), reasons
            )
        except Exception as exc:
            if len(group) > 1:
                log.warning("a group of %d batches failed (%s): each again alone", len(group), exc)
                for w in group:
                    await self._commit([w])
                return
            failure: Exception = Unstorable(str(exc)) if isinstance(exc, _DATA_ERRORS) else exc
            what = f"{group[0].batch.host}'s batch" if group[0].batch else "a rejection count"
            log.error("%s was not stored: %s", what, exc)
            with contextlib.suppress(asyncio.InvalidStateError):
                group[0].done.set_exception(failure)
            return
        self.groups += 1
        it = iter(counts)
        for w in group:
            with contextlib.suppress(asyncio.InvalidStateError):
                w.done.set_result(next(it) if w.batch is not None else 0)
