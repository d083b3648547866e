"""The firewall rules to request, grouped by the device that enforced them. Pure.

One :class:`Rule` per (enforcing device, action, source host, destination host, interaction,
direction), its ports merged into ranges; the Markdown ticket and the JSON report's
``rules`` list are both made from :func:`rules`. The exposure audit's undocumented open
ports become "close these" rules (:func:`close_rules`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netcheck.controller.evaluate import device_words
from netcheck.controller.model import CheckRow, Device, Side
from netcheck.controller.ports import port_ranges
from netcheck.controller.spec import Spec

if TYPE_CHECKING:
    from netcheck.controller.exposure import Finding

# The words a ticket uses for a flow whose direction the spec does not state.
NOT_STATED = "direction not stated by the spec"


@dataclass(frozen=True)
class Rule:
    """One rule to request: ``action`` TCP from the source to the destination on ``ports``."""

    device: Device | None
    side: Side | None
    action: str  # allow | block
    src_role: str
    src_host: str
    src_address: str
    dst_role: str
    dst_host: str
    dst_address: str
    ports: str  # merged into ranges: "22, 6000-6010"
    interaction: int
    title: str
    purpose: str
    direction: str  # forward | reverse, relative to the interaction's title
    direction_stated: bool
    causes: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"{self.action} TCP {self.src_address} -> {self.dst_address} port {self.ports}"


def device_heading(device: Device | None, side: Side | None) -> str:
    """Where a group of rules is enforced, in words."""
    if device is None:
        return "Enforcing device not known" + (f" ({side})" if side else "")
    where = device_words(device)
    if device.at == "after":
        where = f"at or just past {where}"
    elif device.address is None:
        where = f"{where}, in the name of the destination"
    if side == "host":
        return f"The destination host's own firewall: {where}"
    if side == "network":
        return f"In the network: {where}"
    return where[:1].upper() + where[1:]


def purpose_of(spec: Spec, interaction: int, ports: Iterable[int]) -> str:
    """The seed's purposes of the interaction's flows that hold any of ``ports``."""
    wanted = set(ports)
    try:
        inter = spec.interaction(interaction)
    except KeyError:
        return ""
    out: list[str] = []
    for f in inter.flows:
        if f.purpose and wanted.intersection(f.port_range) and f.purpose not in out:
            out.append(f.purpose)
    return " ".join(out)


def _device_order(d: Device | None) -> tuple[int, int, str, str]:
    if d is None:
        return (1, 0, "", "")
    return (0, d.hops if d.hops is not None else 256, d.address or "", d.at)


def rules(spec: Spec, failing: Sequence[CheckRow]) -> list[Rule]:
    """The rules to request for these failing checks, grouped by enforcing device first."""
    groups: dict[
        tuple[Device | None, Side | None, str, str, str, int, str, bool], list[CheckRow]
    ] = {}
    for r in failing:
        c = r.check
        action = "block" if c.spec.expect == "closed" else "allow"
        key = (
            r.device,
            r.side,
            action,
            c.src_host,
            c.spec.dst_host,
            c.spec.interaction,
            c.direction,
            c.direction_stated,
        )
        groups.setdefault(key, []).append(r)
    out: list[Rule] = []
    for (device, side, action, _, _, inter, direction, stated), rows in groups.items():
        c = rows[0].check
        ports = [x.check.spec.port for x in rows]
        try:
            title = spec.interaction(inter).title
        except KeyError:
            title = ""
        out.append(
            Rule(
                device=device,
                side=side,
                action=action,
                src_role=c.src_role,
                src_host=c.src_host,
                src_address=c.src_address,
                dst_role=c.spec.dst_role,
                dst_host=c.spec.dst_host,
                dst_address=c.spec.dst_address,
                ports=port_ranges(ports),
                interaction=c.spec.interaction,
                title=title,
                purpose=purpose_of(spec, c.spec.interaction, ports),
                direction=direction,
                direction_stated=stated,
                causes=tuple(sorted({x.cause for x in rows})),
            )
        )
    out.sort(
        key=lambda x: (
            _device_order(x.device),
            x.side or "",
            x.interaction,
            x.src_host,
            x.dst_host,
            x.action,
        )
    )
    return out


@dataclass(frozen=True)
class CloseRule:
    """One "close these" line of a ticket: source -> destination, the ports merged."""

    src_host: str
    src_address: str
    dst_host: str
    dst_address: str
    ports: str
    banners: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"block TCP {self.src_address} -> {self.dst_address} port {self.ports}"


def close_rules(findings: Iterable[Finding]) -> list[CloseRule]:
    """Exposure findings (:mod:`~netcheck.controller.exposure`) as the rules to request
    ("close these"): one per host pair, its ports merged into ranges, with the banners."""
    pairs: dict[tuple[str, str, str, str], list[Finding]] = {}
    for f in findings:
        pairs.setdefault((f.src_host, f.src_address, f.dst_host, f.dst_address), []).append(f)
    out = []
    for (sh, sa, dh, da), group in sorted(pairs.items()):
        ports = sorted({f.port for f in group})
        banners = tuple(
            f"{f.port}: {f.banner}" for f in sorted(group, key=lambda f: f.port) if f.banner
        )
        out.append(CloseRule(sh, sa, dh, da, port_ranges(ports), banners))
    return out
