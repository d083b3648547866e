"""The current evaluation, computed at most once per (store version, time bucket).

``/``, ``/metrics``, ``/api/v1/report`` and ``/api/v1/gate`` all read the same evaluation.
It is recomputed only when the store committed something since (:attr:`Store.version`) or
the clock entered a new bucket of ``bucket_s`` seconds (so results still age to ``stale``
without any new write). The gate decisions of every mode are cached with it
(:meth:`EvaluationCache.with_gates`). The store is read through its read-only connection, so
a reader never waits for a commit. :meth:`EvaluationCache.get` blocks: call it from a worker
thread.
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
    ) -> None:
        self._spec, self._expected, self._store = spec, expected, store
        self._clock, self._bucket = clock, bucket_s
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._ev: Evaluation | None = None
        self._gates: tuple[Evaluation, tuple[GateDecision, ...]] | None = None
        self.computed = 0  # evaluations actually run (for tests)

    def get(self) -> Evaluation:
        with self._lock:
            now = self._clock()
            key = (self._store.version, math.floor(now / self._bucket))
            if self._ev is not None and key == self._key:
                return self._ev
            # The version is read before the data: a write landing meanwhile only makes the
            # next call recompute.
            ev = evaluate(self._spec, self._expected, self._store.snapshot(), now)
            self._key, self._ev = key, ev
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
