"""The current evaluation, computed at most once per (store version, time bucket).

``/``, ``/metrics``, ``/api/v1/report`` and ``/api/v1/gate`` all read the same evaluation.
It is recomputed only when the store committed something since (:attr:`Store.version`) or
the clock entered a new bucket of ``bucket_s`` seconds (so results still age to ``stale``
without any new write). The gate decisions of every mode are cached with it
(:meth:`EvaluationCache.with_gates`). The store is read through its read-only connection, so
a reader never waits for a commit. While one thread computes a new evaluation, the others
are answered at once with the previous one if it is younger than ``max_stale_s`` (stale while
revalidate: under a burst of commits a reader waits for at most one evaluation in a row, not
for each). :meth:`EvaluationCache.get` blocks: call it from a worker thread.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from netcheck.controller.evaluate import evaluate
from netcheck.controller.expand import Expected, expected
from netcheck.controller.gate import gate
from netcheck.controller.inventory import Inventory
from netcheck.controller.model import Evaluation, GateDecision
from netcheck.controller.spec import Spec
from netcheck.controller.store import Store

BUCKET_SECONDS = 1.0
MAX_STALE_SECONDS = 5.0


def evaluate_store(spec: Spec, inventory: Inventory, store: Store, now: float) -> Evaluation:
    """Expand, read everything from the store and judge it (blocking: run it in a thread)."""
    return evaluate(spec, expected(spec, inventory), store.snapshot(), now)


class EvaluationCache:
    """Thread-safe; one computation at a time, the others wait for its answer."""

    def __init__(
        self,
        spec: Spec,
        expected: Expected,
        store: Store,
        clock: Callable[[], float],
        bucket_s: float = BUCKET_SECONDS,
        max_stale_s: float = MAX_STALE_SECONDS,
    ) -> None:
        self._spec, self._expected, self._store = spec, expected, store
        self._clock, self._bucket, self._max_stale = clock, bucket_s, max_stale_s
        self._lock = threading.Lock()  # guards the fields below
        self._computing = threading.Lock()  # held by the one thread computing an evaluation
        self._key: tuple[int, int] | None = None
        self._ev: Evaluation | None = None
        self._ev_at = 0.0
        self._gates: tuple[Evaluation, tuple[GateDecision, ...]] | None = None
        self.computed = 0  # evaluations actually run (for tests)

    def _key_now(self) -> tuple[tuple[int, int], float]:
        now = self._clock()
        return (self._store.version, math.floor(now / self._bucket)), now

    def get(self) -> Evaluation:
        with self._lock:
            key, now = self._key_now()
            ev = self._ev
            if ev is not None and key == self._key:
                return ev
            if ev is not None and self._computing.locked() and now - self._ev_at < self._max_stale:
                return ev  # another thread is computing the new one: answer with this meanwhile
        with self._computing:
            with self._lock:
                # The version is read before the data: a write landing meanwhile only makes
                # the next call recompute.
                key, now = self._key_now()
                if self._ev is not None and key == self._key:
                    return self._ev  # computed while this thread waited
            ev = evaluate(self._spec, self._expected, self._store.snapshot(), now)
            with self._lock:
                self._key, self._ev, self._ev_at = key, ev, now
                self.computed += 1
            return ev

    def with_gates(self, inventory: Inventory) -> tuple[Evaluation, tuple[GateDecision, ...]]:
        """The evaluation and the gate decision of every mode, computed once per evaluation."""
        ev = self.get()
        with self._lock:
            if self._gates is None or self._gates[0] is not ev:
                modes = self._spec.modes
                self._gates = (ev, tuple(gate(self._spec, inventory, ev, m) for m in modes))
            return self._gates
