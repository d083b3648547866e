"""Prometheus metrics from the store and the current evaluation.

The evaluation's families are written as text once per evaluation (:func:`evaluation_text`);
what changes between evaluations (agents' report ages, the store's counters) is read at each
scrape by a custom collector. No long-lived gauges, so label sets of checks that no longer
exist never linger. It is registered in the app's own CollectorRegistry, never the global one.
Labels are bounded: interaction ids, roles, ports, modes; host names appear on the
per-agent metrics (one series per agent) and on the host-level families of
:mod:`controller.hostmetrics` (failing ranges per host pair, TLS certificates, expected agents),
each cut at ``SERIES_CAP`` series with a count of the series left out. The gate of each mode is
``netcheck_gate_state{mode,state}``, 1 for its current state of go, no-go, undecided (the
enum convention: one series per state); ``netcheck_gate_go`` stays 1 for go, else 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from netcheck.controller.evalcache import EvaluationCache, Generation
from netcheck.controller.gate import gate
from netcheck.controller.hostmetrics import host_families
from netcheck.controller.inventory import Inventory
from netcheck.controller.model import AgentSeen, Decision, Evaluation, GateDecision
from netcheck.controller.pathmetrics import path_families
from netcheck.controller.refusals import REASONS, Refusals
from netcheck.controller.spec import Spec
from netcheck.controller.store import Store

VERDICTS = ("pass", "fail", "unknown")
REJECT_REASONS = ("auth", "schema", "role", "size", "skew")
# netcheck_gate_state's states (model.Decision): one series each per mode, 1 for the current.
GATE_STATES: tuple[Decision, ...] = ("go", "no-go", "undecided")


def check_families(
    spec: Spec,
    inventory: Inventory,
    ev: Evaluation,
    gates: Sequence[GateDecision] | None = None,
) -> Iterator[Metric]:
    """The families that depend only on the evaluation (pure). ``gates``: every mode's
    decision for ``ev``, in the order of ``spec.modes`` (computed here when None)."""
    checks = GaugeMetricFamily(
        "netcheck_checks",
        "Expected checks per interaction and role pair, by verdict.",
        labels=["interaction", "src_role", "dst_role", "verdict"],
    )
    ports = GaugeMetricFamily(
        "netcheck_port_checks",
        "Expected checks per interaction, role pair and port, by verdict.",
        labels=["interaction", "src_role", "dst_role", "port", "verdict"],
    )
    up = GaugeMetricFamily(
        "netcheck_interaction_up",
        "1 when every check of the interaction (and role pair) passes, else 0.",
        labels=["interaction", "src_role", "dst_role"],
    )
    tls = GaugeMetricFamily(
        "netcheck_tls_cert_not_after_timestamp_seconds",
        "Earliest TLS certificate expiry seen on the port (min over hosts), unix time; per "
        "certificate and host: netcheck_tls_certificate_not_after_timestamp_seconds.",
        labels=["interaction", "dst_role", "port"],
    )
    by_pair: dict[tuple[str, str, str], dict[str, int]] = defaultdict(
        dict.fromkeys(VERDICTS, 0).copy
    )
    by_port: dict[tuple[str, str, str, str], dict[str, int]] = defaultdict(
        dict.fromkeys(VERDICTS, 0).copy
    )
    not_after: dict[tuple[str, str, str], float] = {}
    for row in ev.rows:
        c = row.check
        pair = (str(c.spec.interaction), c.src_role, c.spec.dst_role)
        by_pair[pair][row.verdict] += 1
        by_port[(*pair, str(c.spec.port))][row.verdict] += 1
        sc = row.result.service_check if row.result else None
        if sc is not None and sc.tls_not_after is not None:
            key = (str(c.spec.interaction), c.spec.dst_role, str(c.spec.port))
            not_after[key] = min(not_after.get(key, sc.tls_not_after), sc.tls_not_after)
    for key, counts in by_pair.items():
        for v in VERDICTS:
            checks.add_metric([*key, v], counts[v])
        up.add_metric(list(key), 1.0 if counts["fail"] == counts["unknown"] == 0 else 0.0)
    for pkey, counts in by_port.items():
        for v in VERDICTS:
            ports.add_metric([*pkey, v], counts[v])
    for tkey, value in sorted(not_after.items()):
        tls.add_metric(list(tkey), value)
    go = GaugeMetricFamily(
        "netcheck_gate_go",
        "1 go, 0 no-go or undecided (netcheck_gate_state tells the two apart).",
        labels=["mode"],
    )
    state = GaugeMetricFamily(
        "netcheck_gate_state",
        "The mode's gate: 1 for its current state (go, no-go or undecided), 0 for the others.",
        labels=["mode", "state"],
    )
    blocking = GaugeMetricFamily(
        "netcheck_gate_blocking_checks", "Checks blocking the mode's gate.", labels=["mode"]
    )
    decisions = gates if gates is not None else [gate(spec, inventory, ev, m) for m in spec.modes]
    for mode, d in zip(spec.modes, decisions, strict=True):
        go.add_metric([mode], 1.0 if d.decision == "go" else 0.0)
        for name in GATE_STATES:
            state.add_metric([mode, name], 1.0 if d.decision == name else 0.0)
        blocking.add_metric([mode], len(d.blocking))
    unexpected = GaugeMetricFamily(
        "netcheck_unexpected_results", "Stored results that match no expected check."
    )
    unexpected.add_metric([], len(ev.unexpected))
    yield from (checks, ports, up, tls, go, state, blocking, unexpected)
    yield from host_families(spec, ev)
    yield from path_families(ev.paths)


def agent_last_report(ev: Evaluation) -> Iterator[Metric]:
    """When each agent's last batch was accepted: fixed for an evaluation."""
    last = GaugeMetricFamily(
        "netcheck_agent_last_report_timestamp_seconds",
        "Unix time of the agent's last accepted batch.",
        labels=["role", "host"],
    )
    for a in ev.agents:
        if a.last_report is not None:
            last.add_metric([a.role, a.host], a.last_report)
    yield last


def agent_report_age(ev: Evaluation, now: float) -> Metric:
    """Seconds since each agent's last accepted batch, at ``now`` (the scrape)."""
    age = GaugeMetricFamily(
        "netcheck_agent_report_age_seconds",
        "Seconds since the agent's last accepted batch.",
        labels=["role", "host"],
    )
    for a in ev.agents:
        if a.last_report is not None:
            age.add_metric([a.role, a.host], max(0.0, now - a.last_report))
    return age


def counter_families(
    counters: dict[str, float], agents: Sequence[AgentSeen] = ()
) -> Iterator[Metric]:
    """The store's counters; ``agents``: the registered agents, each with a dropped-results
    sample (0 until it reports a drop), so the family has samples before any drop."""
    results = CounterMetricFamily(
        "netcheck_results_ingested",
        "Probe results stored, each once (a re-sent or older result is acknowledged, not "
        "counted again; persisted across restarts).",
    )
    results.add_metric([], counters.get("results_ingested", 0.0))
    batches = CounterMetricFamily(
        "netcheck_batches_ingested", "Result batches accepted (persisted across restarts)."
    )
    batches.add_metric([], counters.get("batches_ingested", 0.0))
    rejected = CounterMetricFamily(
        "netcheck_batches_rejected", "Requests refused, by reason.", labels=["reason"]
    )
    for reason in REJECT_REASONS:
        rejected.add_metric([reason], counters.get(f"rejected:{reason}", 0.0))
    dropped = CounterMetricFamily(
        "netcheck_agent_dropped_results",
        "Results agents reported dropping (buffer full while the controller was away).",
        labels=["role", "host"],
    )
    lost = {(a.role, a.host): 0.0 for a in agents}
    for name, value in counters.items():
        if name.startswith("dropped:"):
            _, role, host = name.split(":", 2)
            lost[(role, host)] = value
    for (role, host), value in sorted(lost.items()):
        dropped.add_metric([role, host], value)
    unexpected = CounterMetricFamily(
        "netcheck_unexpected_results_dropped",
        "Stored results of no expected check removed (row bound or retention).",
    )
    unexpected.add_metric([], counters.get("unexpected_dropped", 0.0))
    yield from (results, batches, rejected, dropped, unexpected)


# The slot of the evaluation's families in the evaluation cache (see EvaluationCache.derived),
# and of the same as exposition text, with the agents' report times (METRICS_TEXT_SLOT).
METRICS_SLOT = ("metrics",)
METRICS_TEXT_SLOT = ("metrics-text",)


def evaluation_families(
    evaluation: EvaluationCache, inventory: Inventory | None = None
) -> Callable[[Generation], tuple[Metric, ...]]:
    """A maker of the families of one generation (built once per evaluation), against the
    generation's own spec and inventory (`inventory`: for a cache made without one)."""
    gates_of = evaluation.gates_of(inventory)

    def make(g: Generation) -> tuple[Metric, ...]:
        inv = g.inventory or inventory
        if inv is None:
            raise ValueError("no inventory to judge the gates against")
        return tuple(check_families(g.spec, inv, g.ev, g.derive(("gates",), gates_of)))

    return make


class _Fixed(Collector):
    """Families already built, for generate_latest."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = tuple(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def exposition(families: Iterable[Metric]) -> bytes:
    """``families`` in the text format, as generate_latest writes a registry's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)


def evaluation_text(
    evaluation: EvaluationCache, inventory: Inventory | None = None
) -> Callable[[Generation], bytes]:
    """A maker of a generation's families as exposition text, with the agents' report times:
    what ``/metrics`` says of an evaluation, written once per evaluation by the background
    (formatting its thousands of series at every scrape was most of a scrape's time, and
    under a burst of 1,000 agents it waited for the interpreter lock: p99 0.45 s)."""
    families = evaluation_families(evaluation, inventory)

    def make(g: Generation) -> bytes:
        return exposition((*g.derive(METRICS_SLOT, families), *agent_last_report(g.ev)))

    return make


class StoreCollector(Collector):
    """What changes between evaluations, at each scrape: the agents' report ages (of the
    newest evaluation, never waiting for one) and the store's counters (one small read on
    the store's connection for small reads). A millisecond or two: ``/metrics`` runs it on
    the event loop, since a hop to a thread and back waited twice behind a burst of posts.

    The evaluation's own families are written once per evaluation (:func:`evaluation_text`,
    the shared cache's :data:`METRICS_TEXT_SLOT`); ``/metrics`` is both.
    """

    def __init__(
        self, store: Store, evaluation: EvaluationCache, clock: Callable[[], float]
    ) -> None:
        self._store, self._evaluation, self._clock = store, evaluation, clock

    def collect(self) -> Iterator[Metric]:
        gen = self._evaluation.latest()
        agents = gen.ev.agents if gen is not None else ()
        if gen is not None:
            yield agent_report_age(gen.ev, self._clock())
        yield from counter_families(self._store.counters(), agents)


class RefusalCollector(Collector):
    """``netcheck_refusals_total{reason}``: requests refused (401/403/429), kept in memory.

    Not in the store on purpose: a refusal must cost no database write (issue 11).
    """

    def __init__(self, refusals: Refusals) -> None:
        self._refusals = refusals

    def collect(self) -> Iterator[Metric]:
        counts, _ = self._refusals.snapshot()
        family = CounterMetricFamily(
            "netcheck_refusals",
            "Requests refused before anything was stored (401, 403, 429), by reason; "
            "in memory since the controller started.",
            labels=["reason"],
        )
        for reason in REASONS:
            family.add_metric([reason], counts.get(reason, 0))
        yield family
