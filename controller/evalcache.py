"""The current evaluation, and what is derived from it, computed at most once per generation.

``/``, ``/metrics``, ``/api/v1/report`` and ``/api/v1/gate`` all read the same evaluation.
A new one is computed only when the store committed something since (:attr:`Store.version`)
or the clock entered a new bucket of ``bucket_s`` seconds (so results still age to ``stale``
without any new write). The store is read through its read-only connection, so a computation
never waits for a commit. What readers derive from an evaluation (the gates, the rendered
page and reports, the metrics families: :meth:`EvaluationCache.derived`) is cached with it,
so every read after the first is a lookup.

Computations run in one background thread at a time, never in a reader's:

- **Bounded wait.** A reader asks for a new generation and waits for it at most ``wait_s``
  (0.1 s); a small site's evaluation is done by then (the reader sees its own writes). A big
  site's reader (the last computation took longer than ``wait_s``) does not wait at all: it
  is answered at once with the previous generation.
- **Fresh for decisions.** ``fresh=True`` (the gate: a migration starts on its answer) waits
  for a generation at least as new as the store and clock at the time of asking, however
  long that takes: whoever asks right after a write sees it.
- **Bounded staleness.** The previous generation is served only while younger than
  ``max_stale_s`` (30 s, by the evaluation's own clock: its ``generated_at`` is on the page
  and in the report); an older one, or none, is waited for without bound.
- **Bounded share (duty cycle).** A computation starts no sooner than ``duty`` (3) x the
  last one's duration after the last one ended, so under continuous readers and writes the
  evaluation takes at most 1/(1 + duty) of the time (a quarter of a core) and ingest the rest.
  ``max_stale_s`` stays the bound: the gap is ``duty`` x a duration far below it, and it
  ends early when a reader waits without bound (a generation past ``max_stale_s``, or a
  fresh reader): the pause would only make that reader wait longer.
- **Kept fresh while read.** While slots are read (within ``recent_s``), a generation a
  third of ``max_stale_s`` old is followed by the next one when the store or the clock moved,
  whether a reader asks or not: a reader after a long run of writes finds one to answer with.
- **Pre-derived.** Before a new generation is published, the background thread derives in it
  every slot read within the last ``recent_s`` (60 s): the page, a report, the metrics are
  ready when a reader first sees the new generation.

:meth:`EvaluationCache.get` and :meth:`~EvaluationCache.derived` block: call them from a
worker thread. The first generation is computed at start (:meth:`EvaluationCache.prime`).

**Reloads.** :meth:`EvaluationCache.use` swaps in a new site (spec, inventory, expected
checks: a reload of topology.yaml or the inventory, :mod:`controller.reload`): the site's
generation number is part of the cache key, so the next reader gets an evaluation of the new
site, never one of the old site again. Each generation carries the spec and inventory it was
judged against (:attr:`Generation.spec`, :attr:`Generation.inventory`): what is derived from
it (page, reports, gates, metrics) reads them there, never a site captured earlier. What an
earlier configuration left in the store is left out of the evaluation (:func:`current_only`):
a removed check disappears, it does not turn "unexpected".
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeGuard, TypeVar, cast

from netcheck.agent.wire import ProbeResult
from netcheck.controller.evaluate import evaluate
from netcheck.controller.expand import Expected, expected
from netcheck.controller.gate import gate
from netcheck.controller.inventory import Inventory
from netcheck.controller.model import Evaluation, GateDecision, Observed
from netcheck.controller.spec import Spec
from netcheck.controller.store import Store

BUCKET_SECONDS = 1.0
MAX_STALE_SECONDS = 30.0
WAIT_SECONDS = 0.1
DUTY = 3.0
RECENT_SECONDS = 60.0
PLAN_FETCH_GRACE_SECONDS = 10.0
log = logging.getLogger("netcheck.controller")
T = TypeVar("T")
Key = tuple[int, int, int]  # (site generation, store version, time bucket)


def evaluate_store(spec: Spec, inventory: Inventory, store: Store, now: float) -> Evaluation:
    """Expand, read everything from the store and judge it (blocking: run it in a thread)."""
    observed = store.snapshot(now, spec.policy.flap_window_seconds)
    return evaluate(spec, expected(spec, inventory), observed, now)


@dataclass(frozen=True)
class _Site:
    """What one evaluation is judged against (swapped whole by :meth:`EvaluationCache.use`)."""

    spec: Spec
    inventory: Inventory | None
    expected: Expected
    generation: int = 0
    retired: frozenset[str] = frozenset()

    @functools.cached_property
    def expected_ids(self) -> frozenset[str]:
        return frozenset(c.spec.check_id for c in self.expected.checks)


@dataclass
class Generation:
    """One evaluation and what was derived from it (each slot computed once), with the spec
    and inventory it was judged against."""

    key: Key
    ev: Evaluation
    spec: Spec
    inventory: Inventory | None = None
    _derived: dict[Hashable, Any] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def derive(self, slot: Hashable, make: Callable[[Generation], T]) -> T:
        """``make(self)``, computed once per slot (makers may derive other slots)."""
        with self._lock:
            if slot not in self._derived:
                self._derived[slot] = make(self)
            return cast(T, self._derived[slot])


def _newer_or_same(have: Key, want: Key) -> bool:
    return have[0] >= want[0] and have[1] >= want[1] and have[2] >= want[2]


def current_only(
    observed: Observed,
    retired: frozenset[str] = frozenset(),
    inventory: Inventory | None = None,
    expected_ids: frozenset[str] | None = None,
    plan_fetched: Mapping[str, float] | None = None,
) -> Observed:
    """`observed` without what earlier configurations left behind, so that a removed check
    disappears instead of turning "unexpected":

    - results of `retired` check ids (a reload of this process removed them);
    - given `expected_ids`, results of other ids from a host the `inventory` no longer has,
      or started more than :data:`PLAN_FETCH_GRACE_SECONDS` before their agent last fetched
      its plan (`plan_fetched`: host -> when it registered, by the controller's clock): an
      older plan's, as after a restart with an edited site once the agent fetched its new
      plan (the grace: the agent's clock may be a little behind);
    - given the `inventory`, the agents, listeners and peers of hosts it no longer has (a
      decommissioned agent's report age would otherwise grow for ever).

    What is left of another id is unexpected (an agent probing what its plan never said)."""
    names = (
        {h.name for hosts in inventory.hosts.values() for h in hosts}
        if inventory is not None
        else None
    )
    fetched = plan_fetched or {}

    def leftover(r: ProbeResult) -> bool:
        if r.check_id in retired:
            return True
        if expected_ids is None or r.check_id in expected_ids:
            return False
        if names is not None and r.src_host not in names:
            return True
        at = fetched.get(r.src_host)
        return at is not None and r.started_at < at - PLAN_FETCH_GRACE_SECONDS

    if retired or expected_ids is not None:
        kept = tuple(r for r in observed.results if not leftover(r))
        if len(kept) != len(observed.results):
            observed = dataclasses.replace(observed, results=kept)
    if inventory is None or names is None:
        return observed
    agents = tuple(a for a in observed.agents if inventory.has(a.role, a.host))
    if (
        len(agents) == len(observed.agents)
        and names.issuperset(observed.listeners)
        and names.issuperset(observed.peers)
    ):
        return observed
    return dataclasses.replace(
        observed,
        agents=agents,
        listeners=MappingProxyType({h: v for h, v in observed.listeners.items() if h in names}),
        peers=MappingProxyType({h: v for h, v in observed.peers.items() if h in names}),
    )


class EvaluationCache:
    """Thread-safe: one background computation at a time; readers wait boundedly."""

    def __init__(
        self,
        spec: Spec,
        expected: Expected,
        store: Store,
        clock: Callable[[], float],
        bucket_s: float = BUCKET_SECONDS,
        max_stale_s: float = MAX_STALE_SECONDS,
        wait_s: float = WAIT_SECONDS,
        duty: float = DUTY,
        recent_s: float = RECENT_SECONDS,
        *,
        inventory: Inventory | None = None,
        plan_fetched: Mapping[str, float] | None = None,
    ) -> None:
        self._site = _Site(spec, inventory, expected)
        # host -> when its agent last fetched its plan (see current_only); None: not known.
        self._plan_fetched: Mapping[str, float] = plan_fetched if plan_fetched is not None else {}
        self._spec, self._expected, self._store = spec, expected, store
        self._clock, self._bucket, self._max_stale = clock, bucket_s, max_stale_s
        self._wait, self._duty, self._recent = wait_s, duty, recent_s
        self._cond = threading.Condition()  # guards the fields below
        self._gen: Generation | None = None
        self._computing = False
        self._wanted: Key | None = None  # the newest key a reader asked for
        self._ended = -math.inf  # monotonic time the last computation ended
        self._took = 0.0  # how long it took (seconds)
        self._makers: dict[Hashable, tuple[Callable[[Generation], Any], float]] = {}
        self._failure: BaseException | None = None
        self.computed = 0  # evaluations actually run (for tests)
        self._timer: threading.Timer | None = None  # the next look for a stale generation
        self._blocked = 0  # readers waiting without bound for a newer generation

    def _key_now(self) -> tuple[Key, float]:
        now = self._clock()
        return (self._site.generation, self._store.version, math.floor(now / self._bucket)), now

    def use(
        self,
        spec: Spec,
        inventory: Inventory,
        expected: Expected,
        generation: int,
        retired: frozenset[str] = frozenset(),
    ) -> None:
        """Judge against this site from now on (a reload): `generation` must grow; results
        of `retired` check ids are left out. Readers from now on never get a generation of the
        previous site; slots keep their makers (they read the generation's own site)."""
        with self._cond:
            if generation <= self._site.generation:
                raise ValueError(
                    f"site generation {generation} is not after {self._site.generation}"
                )
            self._site = _Site(spec, inventory, expected, generation, retired)
            self._spec, self._expected = spec, expected
            self._failure = None
            if self._wanted is not None:  # a reader waiting now wants the new site
                self._wanted, _ = self._key_now()
                self._start()

    # -- computation (background thread) ---------------------------------------------------

    def _arm(self) -> None:
        """Look again in a third of ``max_stale_s`` (call with the lock held): see _refresh."""
        if self._timer is None:
            self._timer = threading.Timer(self._max_stale / 3, self._refresh)
            self._timer.daemon = True
            self._timer.start()

    def _refresh(self) -> None:
        """Keep the generation fresh while it is read: when slots were read within
        ``recent_s`` and the store or the clock moved since the current generation, compute
        the next one once it is a third of ``max_stale_s`` old, without waiting for a reader to
        ask (a reader arriving after a long run of writes with no reads, the first burst after
        1,000 registrations, found it older than ``max_stale_s`` and waited for a whole
        evaluation on a busy machine: 25-50 s)."""
        with self._cond:
            self._timer = None
            recent = time.monotonic() - self._recent
            gen = self._gen
            if gen is None or not any(at >= recent for _, at in self._makers.values()):
                return  # nobody reads: the chain stops (the next computation re-arms it)
            key, now = self._key_now()
            old = now - gen.ev.generated_at >= self._max_stale / 3
            if old and not _newer_or_same(gen.key, key):
                if self._wanted is None or not _newer_or_same(self._wanted, key):
                    self._wanted = key
                self._start()
            else:
                self._arm()

    def _start(self) -> None:
        """Start the background computation unless one runs (call with the lock held)."""
        if not self._computing:
            self._computing = True
            threading.Thread(target=self._compute, name="evaluation", daemon=True).start()

    def _compute(self) -> None:
        try:
            while True:
                with self._cond:
                    want = self._wanted
                    if want is None or (
                        self._gen is not None and _newer_or_same(self._gen.key, want)
                    ):
                        self._computing = False
                        self._cond.notify_all()
                        return
                    # The duty cycle: let ingest have the time in between, unless a reader
                    # waits for this generation (then the pause only makes it wait longer).
                    until = self._ended + self._duty * self._took
                    while self._blocked == 0 and (left := until - time.monotonic()) > 0:
                        self._cond.wait(left)
                t0 = time.monotonic()
                # The version is read before the data: a write landing meanwhile only makes
                # the next generation's key newer.
                with self._cond:  # the site and its key together (use() swaps both)
                    site = self._site
                    key, now = self._key_now()
                snap = self._store.snapshot(now, site.spec.policy.flap_window_seconds)
                fetched = dict(self._plan_fetched)  # written on the event loop meanwhile
                observed = current_only(
                    snap, site.retired, site.inventory, site.expected_ids, fetched
                )
                ev = evaluate(site.spec, site.expected, observed, now)
                gen = Generation(key, ev, site.spec, site.inventory)
                recent = time.monotonic() - self._recent
                with self._cond:  # slots not read lately are forgotten
                    self._makers = {s: ma for s, ma in self._makers.items() if ma[1] >= recent}
                    makers = [(s, m) for s, (m, _) in self._makers.items()]
                for slot, make in makers:
                    gen.derive(slot, make)
                with self._cond:
                    self._gen, self._failure = gen, None
                    self.computed += 1
                    self._ended, self._took = time.monotonic(), time.monotonic() - t0
                    self._arm()
                    self._cond.notify_all()
        except BaseException as exc:  # readers waiting get the error; the next one retries
            log.error("evaluation failed: %s", exc)
            with self._cond:
                self._computing, self._failure, self._wanted = False, exc, None
                self._ended = time.monotonic()
                self._cond.notify_all()

    # -- readers -----------------------------------------------------------------------------

    def prime(self, *slots: tuple[Hashable, Callable[[Generation], Any]]) -> None:
        """Compute the first generation now, in the background, with these slots derived."""
        with self._cond:
            for slot, make in slots:
                self._makers[slot] = (make, time.monotonic())
            self._wanted, _ = self._key_now()
            self._start()

    def _ask(self) -> tuple[Key, Generation | None, bool]:
        """Ask for the generation of now (lock held): (its key, the newest generation, and
        whether that one may be answered at once instead of waiting)."""
        key, now = self._key_now()
        gen = self._gen
        if gen is not None and gen.key == key:
            return key, gen, True
        if self._wanted is None or not _newer_or_same(self._wanted, key):
            self._wanted = key
        self._failure = None
        self._start()
        fresh_enough = self._current_site(gen) and now - gen.ev.generated_at < self._max_stale
        # The last computation took longer than a reader would wait: do not wait at all.
        return key, gen, fresh_enough and self._took >= self._wait

    def _current_site(self, gen: Generation | None) -> TypeGuard[Generation]:
        """`gen` is of the site in use (a reload makes every older generation unservable)."""
        return gen is not None and gen.key[0] == self._site.generation

    def generation(self, fresh: bool = False) -> Generation:
        """The current generation, or the previous one (see the module doc for the bounds);
        with `fresh`, never one older than the store and the clock at the time of asking."""
        with self._cond:
            key, gen, at_once = self._ask()
            if at_once and gen is not None and (not fresh or gen.key == key):
                return gen
            fresh_enough = (
                not fresh
                and self._current_site(gen)
                and self._clock() - gen.ev.generated_at < self._max_stale
            )
            deadline = time.monotonic() + self._wait
            while True:
                cur = self._gen
                if cur is not None and _newer_or_same(cur.key, key):
                    return cur
                if self._failure is not None:
                    if fresh_enough and gen is not None:
                        return gen
                    raise self._failure
                left = deadline - time.monotonic()
                if fresh_enough and left <= 0 and cur is not None:
                    return cur  # the previous one (or newer), while the new one is computed
                if not self._computing:
                    self._start()  # the one running ended with an older key
                if fresh_enough:
                    self._cond.wait(left)
                    continue
                self._blocked += 1  # ends the duty-cycle pause: this reader waits for it
                self._cond.notify_all()
                try:
                    self._cond.wait()
                finally:
                    self._blocked -= 1

    def ready(self, slot: Hashable, make: Callable[[Generation], T]) -> T | None:
        """The slot's value when it can be answered without waiting (on the event loop: no
        thread hop), else None (then call :meth:`derived` from a worker thread)."""
        with self._cond:
            self._makers[slot] = (make, time.monotonic())
            _, gen, at_once = self._ask()
            if not at_once or gen is None:
                return None
        # No lock: a reader thread may be deriving another slot in it; a dict read is atomic.
        return cast("T | None", gen._derived.get(slot))

    def get(self, fresh: bool = False) -> Evaluation:
        return self.generation(fresh).ev

    def latest(self) -> Generation | None:
        """The newest generation computed, whatever its age, without waiting or asking for a
        new one (None before the first): for what may run on the event loop."""
        with self._cond:
            return self._gen

    def derived(self, slot: Hashable, make: Callable[[Generation], T]) -> T:
        """``make(generation)`` for the current generation, computed once per generation.

        The slot is remembered: the next generations derive it before they are published,
        as long as it is read (within ``recent_s``).
        """
        return self.derived_with(slot, make)[1]

    def derived_with(
        self, slot: Hashable, make: Callable[[Generation], T], fresh: bool = False
    ) -> tuple[Generation, T]:
        """:meth:`derived`, with the generation it was derived in."""
        with self._cond:
            self._makers[slot] = (make, time.monotonic())
        gen = self.generation(fresh)
        return gen, gen.derive(slot, make)

    def with_gates(
        self, inventory: Inventory | None = None, fresh: bool = False
    ) -> tuple[Evaluation, tuple[GateDecision, ...]]:
        """The evaluation and the gate decision of every mode, computed once per evaluation."""
        gen, gates = self.derived_with(("gates",), self.gates_of(inventory), fresh)
        return gen.ev, gates

    def gates_of(
        self, inventory: Inventory | None = None
    ) -> Callable[[Generation], tuple[GateDecision, ...]]:
        """A maker of every mode's gate decision (for :meth:`Generation.derive`), against the
        generation's own spec and inventory (`inventory`: only for a cache made without one)."""

        def make(g: Generation) -> tuple[GateDecision, ...]:
            inv = g.inventory or inventory
            if inv is None:
                raise ValueError("no inventory to judge the gates against")
            return tuple(gate(g.spec, inv, g.ev, m) for m in g.spec.modes)

        return make
