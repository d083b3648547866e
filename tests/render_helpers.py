"""Real evaluations for the rendering tests: evaluate() over results made for the example site."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from check_helpers import result_for

from netcheck.agent.wire import ListenerStatus, ProbeResult, ProbeState
from netcheck.controller.evaluate import evaluate
from netcheck.controller.expand import ExpectedCheck, expected
from netcheck.controller.gate import gate
from netcheck.controller.inventory import Inventory, load_inventory
from netcheck.controller.model import AgentSeen, Evaluation, GateDecision, Observed
from netcheck.controller.spec import Spec, load_spec

REPO = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0


def load() -> tuple[Spec, Inventory]:
    spec = load_spec(REPO / "topology.yaml")
    return spec, load_inventory(REPO / "inventory.example.yaml", spec)


def probe(c: ExpectedCheck, state: ProbeState) -> ProbeResult:
    return result_for(c, state, started_at=NOW - 30)


def make_evaluation(
    spec: Spec,
    inv: Inventory,
    *,
    states: dict[str, ProbeState] | None = None,
    untested: Iterable[str] = (),
    untested_interactions: Iterable[int] = (),
) -> Evaluation:
    """Every check open, except ``states`` (check id -> state) and the untested ones."""
    states = states or {}
    skip = set(untested)
    skip_inter = set(untested_interactions)
    exp = expected(spec, inv)
    results = [
        probe(c, states.get(c.spec.check_id, "open"))
        for c in exp.checks
        if c.spec.check_id not in skip and c.spec.interaction not in skip_inter
    ]
    # Each agent-holding destination reports its listeners up, so a refusal reads as a
    # firewall's reject rather than "nothing listening".
    listeners: dict[str, list[ListenerStatus]] = {}
    for c in exp.checks:
        if spec.roles[c.spec.dst_role].agent:
            ls = listeners.setdefault(c.spec.dst_host, [])
            if all(x.port != c.spec.port for x in ls):
                ls.append(ListenerStatus(c.spec.port, "listening", NOW - 600))
    agents = [
        AgentSeen(role, h.name, h.address, "connect", "0.1.0", NOW - 20)
        for role, hosts in inv.hosts.items()
        if spec.roles[role].agent
        for h in hosts
    ]
    seen = Observed(
        results=tuple(results),
        listeners={h: tuple(ls) for h, ls in listeners.items()},
        agents=tuple(agents),
    )
    return evaluate(spec, exp, seen, NOW)


def gates_for(spec: Spec, inv: Inventory, ev: Evaluation) -> list[GateDecision]:
    return [gate(spec, inv, ev, mode) for mode in spec.modes]
