"""spec x inventory -> the expected checks, and each agent's plan. Pure functions.

:func:`expand` first counts (:func:`check_size`: hosts x ports per flow, nothing built) and
refuses a site over the policy's ``max_checks_per_site`` or an agent's plan over
``max_checks_per_plan`` with the offending flow's ``file:line`` and the counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from netcheck.agent.wire import CheckSpec, ListenSpec, Plan, Service, check_id
from netcheck.controller.interconnect import plan_paths
from netcheck.controller.inventory import Inventory
from netcheck.controller.sourced import InputError, Problem
from netcheck.controller.spec import FlowRef, Spec


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
    # False where the spec does not say who connects (a flow of direction "both", not pinned
    # by the inventory): this check is one of the two directions probed.
    direction_stated: bool = True


def _no_devices() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Expected:
    """What one site must show: its name and every expected check (spec x inventory), and the
    names the inventory gives to network devices (address -> name, its ``network:`` section)."""

    site: str
    checks: tuple[ExpectedCheck, ...]
    devices: Mapping[str, str] = field(default_factory=_no_devices)


def _hosts(n: int, what: str) -> str:
    return f"{n:,} {what} host" + ("" if n == 1 else "s")


def _flow_text(ref: FlowRef) -> str:
    return (
        f"interaction {ref.interaction.id}, ports {ref.flow.ports} "
        f"from {ref.src_role} to {ref.dst_role}"
    )


def site_flows(spec: Spec, inventory: Inventory) -> Iterator[FlowRef]:
    """The spec's flows for this site: a flow of direction "both" runs both ways (each
    ``stated=False``) unless the inventory pins who connects (``directions:``), then only that
    way, as stated."""
    for ref in spec.flows():
        if not ref.stated:
            pinned = inventory.pins.get((ref.interaction.id, ref.flow.ports))
            if pinned is not None:
                if pinned != ref.src_role:
                    continue
                ref = replace(ref, stated=True)
        yield ref


def check_size(spec: Spec, inventory: Inventory) -> None:
    """Refuse a site whose checks would exceed the policy's caps, before building any.

    Counted per flow: source hosts x destination hosts x ports for the site, destination
    hosts x ports for each plan of a source role. The error names the flow that adds the
    most (its ``ports`` line in the topology) with the counts.
    """
    pol = spec.policy
    site = 0
    biggest: tuple[int, FlowRef] | None = None
    per_plan: Counter[str] = Counter()  # source role -> checks in each of its hosts' plans
    plan_biggest: dict[str, tuple[int, FlowRef]] = {}
    for ref in site_flows(spec, inventory):
        n_src = len(inventory.of_role(ref.src_role))
        n_dst = len(inventory.of_role(ref.dst_role))
        in_plan = n_dst * len(ref.flow.port_range)
        site += n_src * in_plan
        if biggest is None or n_src * in_plan > biggest[0]:
            biggest = (n_src * in_plan, ref)
        if n_src:
            per_plan[ref.src_role] += in_plan
            if ref.src_role not in plan_biggest or in_plan > plan_biggest[ref.src_role][0]:
                plan_biggest[ref.src_role] = (in_plan, ref)
    problems: list[Problem] = []
    for role, n in per_plan.items():
        if n > pol.max_checks_per_plan:
            count, ref = plan_biggest[role]
            problems.append(
                Problem(
                    spec.file,
                    ref.line,
                    f"{_flow_text(ref)}: "
                    f"{_hosts(len(inventory.of_role(ref.dst_role)), 'destination')} x "
                    f"{len(ref.flow.port_range):,} ports = {count:,} checks in the plan of "
                    f"each {role} agent ({_hosts(len(inventory.of_role(role)), role)} in "
                    f"{inventory.file}); {n:,} in all, more than policy.max_checks_per_plan "
                    f"({pol.max_checks_per_plan:,})",
                )
            )
    if biggest is not None and site > pol.max_checks_per_site:
        count, ref = biggest
        problems.append(
            Problem(
                spec.file,
                ref.line,
                f"{_flow_text(ref)}: {_hosts(len(inventory.of_role(ref.src_role)), 'source')}"
                f" x {_hosts(len(inventory.of_role(ref.dst_role)), 'destination')} x "
                f"{len(ref.flow.port_range):,} ports = {count:,} checks; the site of "
                f"{inventory.file} would expand to {site:,} checks, more than "
                f"policy.max_checks_per_site ({pol.max_checks_per_site:,})",
            )
        )
    if problems:
        raise InputError(problems)


def expand(spec: Spec, inventory: Inventory) -> tuple[ExpectedCheck, ...]:
    """Every (interaction, source host, destination host, port) the spec requires.

    Raises :class:`InputError` (before building anything) past the policy's caps.
    """
    check_size(spec, inventory)
    out: list[ExpectedCheck] = []
    for ref in site_flows(spec, inventory):
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
                            direction=ref.direction,
                            direction_stated=ref.stated,
                        )
                    )
    return tuple(out)


def expected(spec: Spec, inventory: Inventory) -> Expected:
    """The site's name and its expected checks (what ``evaluate`` judges against)."""
    return Expected(
        inventory.site, expand(spec, inventory), MappingProxyType(inventory.device_names())
    )


def listen_specs(spec: Spec, role: str) -> tuple[ListenSpec, ...]:
    """The inbound ports a stand-in for ``role`` must hold (flows expected open to it; both
    ends of a flow of direction "both", pinned by a site or not)."""
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
    checks = tuple(checks)
    inters = {i.id: i for i in spec.interactions}
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
        paths=plan_paths(spec.qualification, inters, checks),
    )
