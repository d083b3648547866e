"""The evaluation cache: once per store version and second, computed in the background;
readers wait boundedly and get the previous generation meanwhile (never one older than
max_stale_s); a duty cycle bounds the evaluation's share; derived slots are ready when a
new generation is published."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from check_helpers import result_for

from netcheck.agent.wire import ResultBatch
from netcheck.controller.evalcache import EvaluationCache, Generation
from netcheck.controller.expand import expected
from netcheck.controller.inventory import load_inventory
from netcheck.controller.spec import load_spec
from netcheck.controller.store import Store

REPO = Path(__file__).resolve().parents[1]


def _site(
    tmp_path: Path,
    *,
    wait_s: float = 5.0,
    duty: float = 0.0,
    max_stale_s: float = 30.0,
    recent_s: float = 60.0,
) -> tuple[EvaluationCache, Store, list[float]]:
    spec = load_spec(REPO / "topology.yaml")
    inv = load_inventory(REPO / "inventory.example.yaml", spec)
    exp = expected(spec, inv)
    store = Store.open(tmp_path / "netcheck.db")
    clock = [time.time()]
    cache = EvaluationCache(
        spec,
        exp,
        store,
        lambda: clock[0],
        max_stale_s=max_stale_s,
        wait_s=wait_s,
        duty=duty,
        recent_s=recent_s,
    )
    return cache, store, clock


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


def test_latest_never_waits_nor_asks_for_a_generation(tmp_path: Path) -> None:
    """What the event loop may call (the scrape's ages): the newest generation as it is."""
    cache, store, clock = _site(tmp_path)
    assert cache.latest() is None and cache.computed == 0  # nothing computed, none started
    first = cache.generation()
    _write(store, cache, clock[0])
    clock[0] += 1.5
    assert cache.latest() is first  # older than the store and the clock: still no new one
    time.sleep(0.2)
    assert cache.computed == 1
    assert cache.generation() is not first and cache.latest() is not first
    store.close()


def test_a_reader_waits_at_most_wait_s_then_gets_the_previous_one(tmp_path: Path) -> None:
    cache, store, clock = _site(tmp_path, wait_s=0.2)
    previous = cache.get()
    _write(store, cache, clock[0])
    answers: list[object] = []
    with store._rlocks[False]:  # the background computation cannot read the store meanwhile
        t0 = time.monotonic()
        assert cache.get() is previous  # answered after the bounded wait
        assert 0.15 <= time.monotonic() - t0 < 2.0
        clock[0] += 40.0  # now the previous one is older than max_stale_s: a reader waits
        late = threading.Thread(target=lambda: answers.append(cache.get()))
        late.start()
        late.join(0.5)
        assert late.is_alive() and answers == []
    late.join(10.0)
    assert len(answers) == 1 and answers[0] is not previous
    assert cache.computed == 3  # the first, the blocked one, then one for the reader's key
    store.close()


def test_the_duty_cycle_spaces_computations(tmp_path: Path) -> None:
    cache, store, clock = _site(tmp_path, wait_s=0.05, duty=1_000.0)
    previous = cache.get()
    gap, ended = 1_000.0 * cache._took, cache._ended  # the next one starts after the gap
    assert gap > 0.1  # (the example site's evaluation takes more than 0.1 ms)
    _write(store, cache, clock[0])
    t0 = time.monotonic()
    assert cache.get() is previous  # within the gap: the previous one, at once
    while cache.computed == 1 and time.monotonic() - t0 < gap + 30:
        time.sleep(0.01)
    assert cache.computed == 2
    assert cache._ended - cache._took - ended >= gap * 0.99  # it started after the gap
    assert cache.get() is not previous
    store.close()


def test_a_waiting_reader_ends_the_pause(tmp_path: Path) -> None:
    """A reader that must wait for a new generation (the gate: fresh) does not wait out the
    duty-cycle pause, which here would last far beyond the test."""
    cache, store, clock = _site(tmp_path, wait_s=0.05, duty=1_000_000.0)
    first = cache.get()
    assert 1_000_000.0 * cache._took > 60  # the pause: a minute or more
    _write(store, cache, clock[0])
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(cache.get(fresh=True)), daemon=True)
    reader.start()
    reader.join(30)
    assert got and got[0] is not first and cache.computed == 2
    store.close()


def test_a_generation_read_lately_is_followed_without_a_reader(tmp_path: Path) -> None:
    """Writes go on, nobody asks: a slot read lately keeps generations coming once the
    current one is a third of max_stale_s old, with the slot derived; with no recent reader
    nothing is computed."""
    for recent_s, follows in ((60.0, True), (0.0, False)):
        (tmp_path / str(recent_s)).mkdir()
        cache, store, clock = _site(tmp_path / str(recent_s), max_stale_s=0.6, recent_s=recent_s)
        cache.derived(("rows",), lambda g: len(g.ev.rows))
        assert cache.computed == 1
        _write(store, cache, clock[0])
        clock[0] += 0.3  # (the cache's clock) older than 0.6 / 3
        t0 = time.monotonic()
        while cache.computed == 1 and time.monotonic() - t0 < 3.0:
            time.sleep(0.02)
        assert (cache.computed == 2) is follows, recent_s
        if follows:  # ready for the next reader, slot and all
            gen = cache._gen
            assert gen is not None and ("rows",) in gen._derived
        store.close()


def test_a_slot_is_derived_once_per_generation_and_ready_before_publication(
    tmp_path: Path,
) -> None:
    cache, store, clock = _site(tmp_path)
    made: list[Generation] = []

    def make(g: Generation) -> int:
        made.append(g)
        return len(g.ev.rows)

    assert cache.derived(("n",), make) == len(cache.get().rows)
    assert cache.derived(("n",), make) and len(made) == 1  # a lookup
    _write(store, cache, clock[0])
    gen = cache.generation()
    assert gen is made[-1] and len(made) == 2  # derived in the background, before publication
    assert cache.derived(("n",), make) and len(made) == 2
    store.close()


def test_prime_computes_the_first_generation_in_the_background(tmp_path: Path) -> None:
    cache, store, _ = _site(tmp_path)
    made: list[Generation] = []
    cache.prime((("n",), made.append))
    gen = cache.generation()
    assert made == [gen] and cache.computed == 1
    store.close()


def test_a_slow_sites_reader_does_not_wait_at_all(tmp_path: Path) -> None:
    """When the last computation took longer than wait_s, the previous one comes at once,
    also as a ready slot (the event loop's lookup, no thread hop)."""
    cache, store, clock = _site(tmp_path, wait_s=1e-9)
    assert cache.derived(("n",), lambda g: len(g.ev.rows)) > 0
    previous = cache.get()
    _write(store, cache, clock[0])
    with store._rlocks[False]:  # the new computation is held up
        t0 = time.monotonic()
        assert cache.get() is previous
        assert cache.ready(("n",), lambda g: -1) == len(previous.rows)
        assert cache.ready(("other",), lambda g: -1) is None  # never derived: not ready
        assert time.monotonic() - t0 < 1.0
    store.close()


def test_a_fresh_reader_sees_every_write_made_before_it_asked(tmp_path: Path) -> None:
    """The gate's read: no previous generation, however slow the new one is."""
    cache, store, clock = _site(tmp_path, wait_s=0.05)
    previous = cache.get()
    _write(store, cache, clock[0])
    answers: list[object] = []
    with store._rlocks[False]:  # the new generation cannot be computed yet
        assert cache.get() is previous  # an ordinary reader: the previous one, after the wait
        reader = threading.Thread(target=lambda: answers.append(cache.get(fresh=True)))
        reader.start()
        reader.join(0.5)
        assert reader.is_alive() and answers == []  # a fresh one waits
    reader.join(10.0)
    assert len(answers) == 1 and answers[0] is not previous
    assert answers[0] is cache.get(fresh=True)
    store.close()
