"""The agents a site expects, and those that never registered. Pure.

Every host the site's checks name (as source or destination) whose role runs an agent
(``roles.<name>.agent`` in topology.yaml) is expected to register one. An expected agent
that never did has no row in the store, so nothing else (no report age, no result) would
show it: the JSON report's ``never_registered`` and ``netcheck_agent_registered`` do.
"""

from __future__ import annotations

from dataclasses import dataclass

from netcheck.controller.model import Evaluation
from netcheck.controller.spec import Spec


@dataclass(frozen=True, order=True)
class ExpectedAgent:
    role: str
    host: str
    address: str


def expected_agents(spec: Spec, ev: Evaluation) -> tuple[ExpectedAgent, ...]:
    """Each host of an agent role in the evaluation's checks, once, by role and host."""
    found: dict[tuple[str, str], str] = {}
    for row in ev.rows:
        c = row.check
        for role, host, address in (
            (c.src_role, c.src_host, c.src_address),
            (c.spec.dst_role, c.spec.dst_host, c.spec.dst_address),
        ):
            r = spec.roles.get(role)
            if r is not None and r.agent:
                found.setdefault((role, host), address)
    return tuple(sorted(ExpectedAgent(r, h, a) for (r, h), a in found.items()))


def registered(ev: Evaluation) -> frozenset[tuple[str, str]]:
    """(role, host) of every agent that ever registered."""
    return frozenset((a.role, a.host) for a in ev.agents)


def never_registered(spec: Spec, ev: Evaluation) -> tuple[ExpectedAgent, ...]:
    """The expected agents with no registration at all, by role and host."""
    seen = registered(ev)
    return tuple(a for a in expected_agents(spec, ev) if (a.role, a.host) not in seen)
