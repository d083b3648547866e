"""Firewall scenarios: what the lab's routers and hosts drop, reject or translate.

A scenario file (``deploy/lab/scenarios/NAME.yaml``)::

    version: 1
    description: what this scenario shows
    icmp_ratelimit: off         # off (default: every ICMP error answered) | kernel-default
    rules:
      - interaction: 9          # every flow of interaction 9 ...
        ports: "6000-6010"      # ... narrowed to these ports (optional)
        action: drop            # drop | reset (tcp reset) | prohibit (icmp admin-prohibited)
                                # | host-unreachable (icmp host-unreachable)
      - src: cloud_cache        # or explicit: connecting role, listening role, ports
        dst: cloud_manager
        ports: "32820"
        action: reset
      - interaction: 15
        dst_host: prem-vm-2     # optional: only this lab host (src_host likewise)
        action: prohibit
        at: prem                # optional: prem | cloud (a router) | host (the destination
                                # host's own firewall); default: the connecting host's router
    nat:                        # source NAT on a router for the flows selected (as above)
      - interaction: 9
        ports: "7008"
        masquerade: true        # the router's outgoing address ...
        at: prem                # (default: the connecting host's router)
      - interaction: 4
        ports: "8001"
        snat: 198.18.1.250      # ... or this address (in a subnet of that router)

A rule by interaction follows each flow's direction (a ``reverse`` flow is blocked from the
listening side's peer, the way its connection really goes). A router rule goes into the
``forward`` chain of table ``inet nclab`` on that router; an ``at: host`` rule into the
``input`` chain of the same table in the destination host's own namespace, where a packet
capture on the host's interface still sees the SYN. The first matching rule decides. A NAT
rule goes into that router's ``postrouting`` chain (:mod:`deploy.lab.nftables`).

``icmp_ratelimit``: ``off`` sets ``net.ipv4.icmp_ratelimit=0`` on the routers, so every TCP
traceroute probe is answered; ``kernel-default`` leaves the kernel's own limits of a fresh
namespace (``icmp_ratelimit`` 1000 ms per destination with a burst, ``icmp_msgs_per_sec``,
``icmp_msgs_burst``), as a real router has them. Hosts always keep the kernel's defaults.
Errors come back as ``file:line: ...`` (:class:`controller.sourced.InputError`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deploy.lab.layout import INTERCONNECT, MGMT_NET, SITE_NET, SITE_ROUTER, Layout
from netcheck.controller.sourced import Problem, Sourced, load_yaml, raise_if, validate
from netcheck.controller.spec import Spec

Action = Literal["drop", "reset", "prohibit", "host-unreachable"]
Router = Literal["prem", "cloud"]
At = Literal["prem", "cloud", "host"]
IcmpRateLimit = Literal["off", "kernel-default"]
HOST = "host"
LAB_SPACE = ipaddress.IPv4Network("198.18.0.0/15")
SCENARIO_DIR = Path(__file__).parent / "scenarios"
NFT_TABLE = "nclab"
_PORTS = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_ports(text: str) -> tuple[int, ...]:
    """ "22", "6000-6010" or "22, 443, 8000-8010" -> sorted unique ports."""
    out: set[int] = set()
    for part in text.split(","):
        m = _PORTS.match(part)
        if not m:
            raise ValueError(f"{part.strip()!r} is not a port or a range like 6000-6010")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if not (1 <= lo <= hi <= 65535):
            raise ValueError(f"{part.strip()!r}: ports are 1-65535, low to high")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


class Selector(BaseModel):
    """Which flows a rule applies to: an interaction, or src/dst/ports; optionally hosts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interaction: int | None = Field(None, ge=1)
    src: str | None = None
    dst: str | None = None
    src_host: str | None = None
    dst_host: str | None = None
    ports: str | None = None
    note: str = ""

    @field_validator("ports", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("ports")
    @classmethod
    def _valid(cls, v: str | None) -> str | None:
        if v is not None:
            parse_ports(v)
        return v


class Rule(Selector):
    action: Action
    # Which router applies the rule (default: the one of the connecting host's site), or
    # "host": the destination host's own input chain.
    at: At | None = None


class NatRule(Selector):
    masquerade: bool = False
    snat: ipaddress.IPv4Address | None = None
    at: Router | None = None


class ScenarioFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    description: str = ""
    icmp_ratelimit: IcmpRateLimit = "off"
    rules: tuple[Rule, ...] = ()
    nat: tuple[NatRule, ...] = ()


@dataclass(frozen=True)
class Block:
    """One filter rule: traffic from ``src`` to ``dst`` on ``ports`` gets ``action``, on
    router ``router`` ("prem", "cloud") or, for "host", on each destination host itself."""

    router: str
    src: tuple[str, ...]  # addresses
    dst: tuple[str, ...]
    ports: tuple[int, ...]
    action: Action
    origin: str  # "file:line"


@dataclass(frozen=True)
class Nat:
    """One source-NAT rule on ``router``: ``to`` is an address, or None for masquerade."""

    router: str
    src: tuple[str, ...]
    dst: tuple[str, ...]
    ports: tuple[int, ...]
    to: str | None
    origin: str


@dataclass(frozen=True)
class Scenario:
    name: str
    file: str
    description: str
    blocks: tuple[Block, ...]
    nat: tuple[Nat, ...] = ()
    icmp_ratelimit: IcmpRateLimit = "off"

    def host_blocks(self, address: str) -> tuple[Block, ...]:
        """The ``at: host`` rules the host with ``address`` applies to itself."""
        return tuple(
            Block(b.router, b.src, (address,), b.ports, b.action, b.origin)
            for b in self.blocks
            if b.router == HOST and address in b.dst
        )


class UnknownScenario(ValueError):
    """``--scenario`` names no shipped scenario and does not look like a path."""


def looks_like_path(text: str) -> bool:
    """A scenario argument is a file only when it says so: a ``/`` or a YAML suffix."""
    return "/" in text or text.endswith((".yaml", ".yml"))


def scenario_path(name_or_path: str) -> Path:
    """A shipped scenario's file by name, else the path given.

    A shipped name always wins (a folder called ``audit`` in the working directory changes
    nothing), and anything else must look like a path (:func:`looks_like_path`)."""
    if name_or_path in shipped():
        return SCENARIO_DIR / f"{name_or_path}.yaml"
    if looks_like_path(name_or_path):
        return Path(name_or_path)
    raise UnknownScenario(
        f"no shipped scenario {name_or_path!r} (shipped: {', '.join(shipped())}); "
        f"a scenario file is given by a path with a '/' or ending in .yaml, "
        f"e.g. ./{name_or_path}.yaml"
    )


def shipped() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))


def _hosts(
    layout: Layout, role: str, host: str | None, src: Sourced, at: tuple[str | int, ...]
) -> tuple[tuple[str, ...], str, Problem | None]:
    hosts = layout.of_role(role)
    if host is not None:
        hosts = tuple(h for h in hosts if h.name == host)
        if not hosts:
            names = ", ".join(h.name for h in layout.of_role(role))
            return (), "", src.problem(at, f"no lab host {host!r} in role {role} ({names})")
    router = hosts[0].router if hosts else ""
    return tuple(h.address for h in hosts), router, None


@dataclass(frozen=True)
class _Selected:
    src: tuple[str, ...]  # addresses
    dst: tuple[str, ...]
    ports: tuple[int, ...]
    router: str  # the connecting hosts' router
    origin: str


def _select(
    src: Sourced, at: tuple[str | int, ...], rule: Selector, spec: Spec, layout: Layout
) -> list[_Selected]:
    problems: list[Problem] = []
    for key in ("src", "dst"):
        role = getattr(rule, key)
        if role is not None and role not in spec.roles:
            problems.append(
                src.problem((*at, key), f"unknown role {role!r} (roles: {', '.join(spec.roles)})")
            )
    # (connecting role, listening role, ports) the rule selects
    selected: list[tuple[str, str, tuple[int, ...]]] = []
    wanted = parse_ports(rule.ports) if rule.ports is not None else None
    if rule.interaction is not None:
        try:
            inter = spec.interaction(rule.interaction)
        except KeyError:
            problems.append(
                src.problem((*at, "interaction"), f"no interaction {rule.interaction} in the spec")
            )
            raise_if(problems)
            return []
        for flow in inter.flows:
            for s, d in inter.directions(flow):  # both ways of a flow of direction "both"
                if (rule.src not in (None, s)) or (rule.dst not in (None, d)):
                    continue
                ports = tuple(p for p in flow.port_range if wanted is None or p in wanted)
                if ports:
                    selected.append((s, d, ports))
        if not selected:
            problems.append(
                src.problem(
                    at,
                    f"the rule matches no flow of interaction {rule.interaction} (check "
                    "src/dst, which name the connecting and the listening role, and ports)",
                )
            )
    elif rule.src is None or rule.dst is None or wanted is None:
        problems.append(src.problem(at, "a rule needs 'interaction', or 'src', 'dst' and 'ports'"))
    else:
        selected.append((rule.src, rule.dst, wanted))
    raise_if(problems)
    out: list[_Selected] = []
    origin = f"{Path(src.file).name}:{src.line(at)}"
    for s, d, ports in selected:
        saddrs, router, p1 = _hosts(layout, s, rule.src_host, src, (*at, "src_host"))
        daddrs, _, p2 = _hosts(layout, d, rule.dst_host, src, (*at, "dst_host"))
        raise_if(p for p in (p1, p2) if p is not None)
        if saddrs and daddrs:
            out.append(_Selected(saddrs, daddrs, ports, router, origin))
    return out


def _blocks(src: Sourced, i: int, rule: Rule, spec: Spec, layout: Layout) -> list[Block]:
    return [
        Block(rule.at or s.router, s.src, s.dst, s.ports, rule.action, s.origin)
        for s in _select(src, ("rules", i), rule, spec, layout)
    ]


def _router_nets(router: str) -> tuple[ipaddress.IPv4Network, ...]:
    return tuple(net for site, net in SITE_NET.items() if SITE_ROUTER[site] == router)


def _snat_problem(address: ipaddress.IPv4Address, router: str, layout: Layout) -> str | None:
    """Why ``address`` cannot be a source NAT address on ``router`` (None: it can)."""
    if address not in LAB_SPACE or address in MGMT_NET:
        return f"snat {address}: lab addresses are from {LAB_SPACE}, outside the management net"
    taken = {h.address for h in layout.hosts} | set(INTERCONNECT)
    taken |= {str(net.network_address + 1) for net in SITE_NET.values()}
    if str(address) in taken:
        return f"snat {address}: the address of a lab host or router"
    nets = _router_nets(router)
    if not any(address in net for net in nets):
        where = ", ".join(str(n) for n in nets)
        return (
            f"snat {address}: replies must come back to the {router} router, so the address "
            f"must be in one of its subnets ({where})"
        )
    return None


def _nats(src: Sourced, i: int, rule: NatRule, spec: Spec, layout: Layout) -> list[Nat]:
    at: tuple[str | int, ...] = ("nat", i)
    if rule.masquerade == (rule.snat is not None):
        raise_if([src.problem(at, "a NAT rule needs exactly one of 'masquerade: true', 'snat'")])
    out: list[Nat] = []
    for s in _select(src, at, rule, spec, layout):
        router = rule.at or s.router
        to = str(rule.snat) if rule.snat is not None else None
        if rule.snat is not None:
            why = _snat_problem(rule.snat, router, layout)
            raise_if([src.problem((*at, "snat"), why)] if why else [])
        out.append(Nat(router, s.src, s.dst, s.ports, to, s.origin))
    return out


def load_scenario(name_or_path: str, spec: Spec, layout: Layout) -> Scenario:
    path = scenario_path(name_or_path)
    src = load_yaml(path)
    parsed = validate(src, ScenarioFile)
    blocks: list[Block] = []
    for i, rule in enumerate(parsed.rules):
        blocks.extend(_blocks(src, i, rule, spec, layout))
    nats: list[Nat] = []
    for i, nat in enumerate(parsed.nat):
        nats.extend(_nats(src, i, nat, spec, layout))
    return Scenario(
        path.stem, str(path), parsed.description, tuple(blocks), tuple(nats),
        parsed.icmp_ratelimit,
    )  # fmt: skip
