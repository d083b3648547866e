"""Group commit: one writer task puts every batch waiting at that moment in ONE transaction.

Handlers validate a batch first (a bad batch is refused before it joins a group and never
affects the others), then :meth:`GroupWriter.ingest` queues it and waits. The writer task
takes everything queued, writes it with :meth:`Store.ingest_group` in a worker thread (the
only thread hop, shared by the whole group), and answers each waiter once that transaction
committed: acknowledged = committed. While a commit is in flight, new batches queue up and
go together in the next one, so the fsync is paid once per group, not once per batch.
If the transaction fails, every waiter of the group gets the exception and nothing of the
group is kept (SQLite rolled it back). Rejection counts ride along in the same groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from netcheck.agent.wire import ResultBatch
from netcheck.controller.store import Store

log = logging.getLogger("netcheck.controller")

# At most this many results per transaction; the rest waits for the next one.
GROUP_RESULTS = 20_000


@dataclass
class _Waiting:
    batch: ResultBatch | None  # None: a rejection count
    reason: str
    done: asyncio.Future[int]


class GroupWriter:
    """The store's single writer for results and rejections (start, then close)."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self._queue: list[_Waiting] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.groups = 0  # transactions committed (for tests and logs)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-writer")

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

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
            log.error("a group of %d batches was not stored: %s", len(batches), exc)
            for w in group:
                with contextlib.suppress(asyncio.InvalidStateError):
                    w.done.set_exception(exc)
            return
        self.groups += 1
        it = iter(counts)
        for w in group:
            with contextlib.suppress(asyncio.InvalidStateError):
                w.done.set_result(next(it) if w.batch is not None else 0)
