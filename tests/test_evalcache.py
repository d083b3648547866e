"""The evaluation cache: once per store version and second, stale while one thread revalidates."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from check_helpers import result_for

from netcheck.agent.wire import ResultBatch
from netcheck.controller.evalcache import EvaluationCache
from netcheck.controller.expand import expected
from netcheck.controller.inventory import load_inventory
from netcheck.controller.spec import load_spec
from netcheck.controller.store import Store

REPO = Path(__file__).resolve().parents[1]


def _site(tmp_path: Path) -> tuple[EvaluationCache, Store, list[float]]:
    spec = load_spec(REPO / "topology.yaml")
    inv = load_inventory(REPO / "inventory.example.yaml", spec)
    exp = expected(spec, inv)
    store = Store.open(tmp_path / "netcheck.db")
    clock = [time.time()]
    return EvaluationCache(spec, exp, store, lambda: clock[0], max_stale_s=5.0), store, clock


def _write(store: Store, cache: EvaluationCache, now: float) -> None:
    c = next(c for c in cache._expected.checks if c.src_role == "pio")
    store.ingest(ResultBatch("pio", c.src_host, (result_for(c, started_at=now),)), now)


def test_recomputed_once_per_version_and_bucket(tmp_path: Path) -> None:
    cache, store, clock = _site(tmp_path)
    first = cache.get()
    assert cache.get() is first and cache.computed == 1
    _write(store, cache, clock[0])
    second = cache.get()
    assert second is not first and cache.computed == 2
    clock[0] += 1.5  # a new time bucket: results age without any write
    assert cache.get() is not second and cache.computed == 3
    store.close()


def test_a_reader_gets_the_previous_evaluation_while_another_computes(tmp_path: Path) -> None:
    cache, store, clock = _site(tmp_path)
    previous = cache.get()
    _write(store, cache, clock[0])
    answers: list[object] = []
    with cache._computing:  # another thread is computing the new evaluation
        reader = threading.Thread(target=lambda: answers.append(cache.get()))
        reader.start()
        reader.join(5.0)
        assert answers == [previous]  # answered at once, not after the computation
        clock[0] += 10.0  # now the previous one is older than max_stale_s: a reader waits
        late = threading.Thread(target=lambda: answers.append(cache.get()))
        late.start()
        late.join(0.3)
        assert late.is_alive() and len(answers) == 1
    late.join(10.0)
    assert len(answers) == 2 and answers[1] is not previous
    store.close()
