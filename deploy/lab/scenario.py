"""Firewall scenarios: which flows the lab's routers drop or reject, as nftables rules.

A scenario file (``deploy/lab/scenarios/NAME.yaml``)::

    version: 1
    description: what this scenario shows
    rules:
      - interaction: 9          # every flow of interaction 9 ...
        ports: "6000-6010"      # ... narrowed to these ports (optional)
        action: drop            # drop | reset (tcp reset) | prohibit (icmp admin-prohibited)
      - src: cloud_cache        # or explicit: connecting role, listening role, ports
        dst: cloud_manager
        ports: "32820"
        action: reset
      - interaction: 15
        dst_host: prem-vm-2     # optional: only this lab host (src_host likewise)
        action: prohibit
        at: prem                # optional: the router that applies it (default: the
                                # router of the connecting host's site)

A rule by interaction follows each flow's direction (a ``reverse`` flow is blocked from the
listening side's peer, the way its connection really goes). Each rule is applied on the
router of the connecting host's site (or the one ``at`` names), in the ``forward`` chain of
table ``inet nclab``; the first matching rule decides.
Errors come back as ``file:line: ...`` (:class:`controller.sourced.InputError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deploy.lab.layout import Layout
from netcheck.controller.ports import port_ranges
from netcheck.controller.sourced import Problem, Sourced, load_yaml, raise_if, validate
from netcheck.controller.spec import Spec

Action = Literal["drop", "reset", "prohibit"]
SCENARIO_DIR = Path(__file__).parent / "scenarios"
NFT_TABLE = "nclab"
_PORTS = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
_VERDICT: dict[str, str] = {
    "drop": "drop",
    "reset": "reject with tcp reset",
    "prohibit": "reject with icmp type admin-prohibited",
}


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


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Action
    interaction: int | None = Field(None, ge=1)
    src: str | None = None
    dst: str | None = None
    src_host: str | None = None
    dst_host: str | None = None
    ports: str | None = None
    # Which router applies the rule (default: the one of the connecting host's site).
    at: Literal["prem", "cloud"] | None = None
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


class ScenarioFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    description: str = ""
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Block:
    """One nftables rule: traffic from ``src`` to ``dst`` on ``ports`` gets ``action``."""

    router: str
    src: tuple[str, ...]  # addresses
    dst: tuple[str, ...]
    ports: tuple[int, ...]
    action: Action
    origin: str  # "file:line"


@dataclass(frozen=True)
class Scenario:
    name: str
    file: str
    description: str
    blocks: tuple[Block, ...]


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


def _resolve(src: Sourced, i: int, rule: Rule, spec: Spec, layout: Layout) -> list[Block]:
    at: tuple[str | int, ...] = ("rules", i)
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
            s, d = inter.ends(flow)
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
    out: list[Block] = []
    for s, d, ports in selected:
        saddrs, router, p1 = _hosts(layout, s, rule.src_host, src, (*at, "src_host"))
        daddrs, _, p2 = _hosts(layout, d, rule.dst_host, src, (*at, "dst_host"))
        raise_if(p for p in (p1, p2) if p is not None)
        if saddrs and daddrs:
            origin = f"{Path(src.file).name}:{src.line(at)}"
            out.append(Block(rule.at or router, saddrs, daddrs, ports, rule.action, origin))
    return out


def load_scenario(name_or_path: str, spec: Spec, layout: Layout) -> Scenario:
    path = scenario_path(name_or_path)
    src = load_yaml(path)
    parsed = validate(src, ScenarioFile)
    blocks: list[Block] = []
    for i, rule in enumerate(parsed.rules):
        blocks.extend(_resolve(src, i, rule, spec, layout))
    return Scenario(path.stem, str(path), parsed.description, tuple(blocks))


def nft_ruleset(blocks: tuple[Block, ...], router: str) -> str:
    """The nftables script for ``router`` (replaces the lab's table as a whole)."""
    lines = [
        f"table inet {NFT_TABLE}",
        f"delete table inet {NFT_TABLE}",
        f"table inet {NFT_TABLE} {{",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
    ]
    for b in blocks:
        if b.router != router:
            continue
        lines.append(
            f"    ip saddr {{ {', '.join(b.src)} }} ip daddr {{ {', '.join(b.dst)} }} "
            f"tcp dport {{ {port_ranges(b.ports)} }} counter {_VERDICT[b.action]} "
            f'comment "{b.origin[-120:]}"'
        )
    lines += ["  }", "}", ""]
    return "\n".join(lines)
