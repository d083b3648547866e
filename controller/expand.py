"""spec x inventory -> the expected checks, and each agent's plan. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from netcheck.agent.wire import CheckSpec, ListenSpec, Plan, Service, check_id
from netcheck.controller.inventory import Inventory
from netcheck.controller.spec import Spec


@dataclass(frozen=True)
class ExpectedCheck:
    """One check the spec requires: src host connects to dst host on one port.

    ``spec`` is what the source's agent is told (its plan's entry, the wire's
    :class:`~netcheck.agent.wire.CheckSpec`: id, interaction, destination, port, service,
    expectation); the controller adds the source and when the check counts.
    """

    spec: CheckSpec
    src_role: str
    src_host: str
    src_address: str
    modes: tuple[str, ...]
    direction: str  # "forward" or "reverse", relative to the interaction's title


@dataclass(frozen=True)
class Expected:
    """What one site must show: its name and every expected check (spec x inventory)."""

    site: str
    checks: tuple[ExpectedCheck, ...]


def expand(spec: Spec, inventory: Inventory) -> tuple[ExpectedCheck, ...]:
    """Every (interaction, source host, destination host, port) the spec requires."""
    out: list[ExpectedCheck] = []
    for ref in spec.flows():
        inter = ref.interaction.id
        modes = spec.modes_of(inter)
        for src in inventory.of_role(ref.src_role):
            for dst in inventory.of_role(ref.dst_role):
                for port in ref.flow.port_range:
                    probe = CheckSpec(
                        check_id=check_id(inter, src.name, dst.name, port),
                        interaction=inter,
                        dst_role=ref.dst_role,
                        dst_host=dst.name,
                        dst_address=dst.address,
                        port=port,
                        service=ref.flow.service,
                        expect=ref.flow.expect,
                    )
                    out.append(
                        ExpectedCheck(
                            spec=probe,
                            src_role=ref.src_role,
                            src_host=src.name,
                            src_address=src.address,
                            modes=modes,
                            direction=ref.flow.direction,
                        )
                    )
    return tuple(out)


def expected(spec: Spec, inventory: Inventory) -> Expected:
    """The site's name and its expected checks (what ``evaluate`` judges against)."""
    return Expected(inventory.site, expand(spec, inventory))


def listen_specs(spec: Spec, role: str) -> tuple[ListenSpec, ...]:
    """The inbound ports a stand-in for ``role`` must hold (flows expected open to it)."""
    ports: dict[int, tuple[Service, list[int]]] = {}
    for ref in spec.flows():
        if ref.dst_role != role or ref.flow.expect != "open":
            continue
        for port in ref.flow.port_range:
            _, inters = ports.setdefault(port, (ref.flow.service, []))
            if ref.interaction.id not in inters:
                inters.append(ref.interaction.id)
    return tuple(
        ListenSpec(port=p, service=svc, interactions=tuple(inters))
        for p, (svc, inters) in sorted(ports.items())
    )


def plan_for(spec: Spec, inventory: Inventory, role: str, host: str, address: str) -> Plan:
    """The plan of the agent on ``host`` (of ``role``): what to hold and what to probe."""
    mine = (c for c in expand(spec, inventory) if c.src_role == role and c.src_host == host)
    return plan_from_checks(spec, role, host, address, mine)


def by_source(checks: Iterable[ExpectedCheck]) -> dict[tuple[str, str], tuple[ExpectedCheck, ...]]:
    """The expected checks indexed by their source (role, host), in expansion order."""
    out: dict[tuple[str, str], list[ExpectedCheck]] = {}
    for c in checks:
        out.setdefault((c.src_role, c.src_host), []).append(c)
    return {k: tuple(v) for k, v in out.items()}


def plan_from_checks(
    spec: Spec, role: str, host: str, address: str, checks: Iterable[ExpectedCheck]
) -> Plan:
    """The plan of one agent from its expected checks (already expanded, see :func:`by_source`)."""
    p = spec.policy
    return Plan(
        role=role,
        host=host,
        address=address,
        listen=listen_specs(spec, role),
        checks=tuple(c.spec for c in checks),
        timeout_s=p.probe_timeout_seconds,
        min_timeout_s=p.probe_min_timeout_seconds,
        rtt_factor=p.probe_rtt_factor,
        retries=p.probe_retries,
        period_s=p.probe_period_seconds,
        concurrency=p.probe_concurrency,
    )
