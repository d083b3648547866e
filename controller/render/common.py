"""Small pure helpers shared by every report format and the page."""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from netcheck.controller.model import CheckRow, Evaluation, Rollup, Verdict, rolled_up
from netcheck.controller.spec import Flow, Interaction

VERDICTS: tuple[Verdict, ...] = ("pass", "fail", "unknown")


@dataclass(frozen=True)
class Summary:
    """Counts over every expected check of an evaluation."""

    total: int
    passed: int
    failed: int
    unknown: int
    unexpected: int

    @property
    def verdict(self) -> Verdict:
        return rolled_up(self.failed, self.unknown)


def summary(ev: Evaluation) -> Summary:
    counts = {v: 0 for v in VERDICTS}
    for row in ev.rows:
        counts[row.verdict] += 1
    return Summary(
        total=len(ev.rows),
        passed=counts["pass"],
        failed=counts["fail"],
        unknown=counts["unknown"],
        unexpected=len(ev.unexpected),
    )


def iso(ts: float | None) -> str | None:
    """Seconds since the epoch as an ISO 8601 UTC timestamp (None stays None)."""
    if ts is None:
        return None
    return _iso_second(math.floor(ts))


@functools.lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    # Once per second of time (a report of 63,000 checks has a few distinct seconds): the
    # datetime conversion was a third of the JSON report's rendering.
    return datetime.fromtimestamp(second, tz=UTC).isoformat().replace("+00:00", "Z")


def check_label(row: CheckRow) -> str:
    """``pio-1 -> prem-mgr:2376 (docker)``: who connects to what."""
    c = row.check
    return f"{c.src_host} -> {c.spec.dst_host}:{c.spec.port} ({c.spec.service})"


def interaction_label(inter: Interaction) -> str:
    """``interaction 4: HDM PIO Appliance to HDM Prem Manager``."""
    return f"interaction {inter.id}: {inter.title}"


def rollup_of(ev: Evaluation, inter: Interaction) -> Rollup:
    """The roll-up of one interaction (all zero when no host pair exists for it)."""
    for r in ev.by_interaction:
        if r.key == str(inter.id):
            return r
    return Rollup(str(inter.id), inter.title, inter.source, inter.destination, 0, 0, 0)


def counts_text(r: Rollup) -> str:
    """``52/56`` (passed of total), the label of an edge."""
    return f"{r.passed}/{r.total}"


def _short(n: int, up: bool) -> str:
    if n < 10_000:
        return str(n)
    tenths = -(-n // 100) if up else n // 100
    return f"{tenths / 10:g}k"


def short_counts(r: Rollup) -> str:
    """:func:`counts_text` in at most 12 characters (an edge label): from 10,000 on in
    thousands, passed rounded down and expected up, so a failure never reads as all pass."""
    if r.passed == r.total:
        return f"{_short(r.passed, False)}/{_short(r.total, False)}"
    return f"{_short(r.passed, False)}/{_short(r.total, True)}"


def not_passing(rows: Iterable[CheckRow]) -> list[CheckRow]:
    """Failing checks first, then unknown ones, each in the evaluation's order."""
    rows = list(rows)
    return [r for r in rows if r.verdict == "fail"] + [r for r in rows if r.verdict == "unknown"]


def rows_of(ev: Evaluation, interaction: int) -> list[CheckRow]:
    return [r for r in ev.rows if r.check.spec.interaction == interaction]


def flow_directions(inter: Interaction) -> tuple[bool, bool]:
    """(has a forward flow, has a reverse flow): which way the arrows of an edge point."""
    return (
        any(f.direction in ("forward", "both") for f in inter.flows),
        any(f.direction in ("reverse", "both") for f in inter.flows),
    )


def connections(inter: Interaction) -> list[tuple[str, str]]:
    """(connecting role, listening role) pairs of an interaction, from its flows in order:
    who really connects, whatever the order of the title."""
    out: list[tuple[str, str]] = []
    for f in inter.flows:
        for pair in inter.directions(f):
            if pair not in out:
                out.append(pair)
    return out


def text_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int | None = None,
    wrap: Sequence[int] = (),
) -> list[str]:
    """A plain aligned text table (for terminals). With ``width``, the columns ``wrap``
    (indexes) are narrowed, the widest by one character at a time, until a line fits (each
    at least 16 characters), and their cells wrapped onto more lines of the row."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    floor = 16
    while width is not None and sum(widths) + 2 * (len(widths) - 1) > width:
        narrow = [i for i in wrap if widths[i] > max(floor, len(header[i]))]
        if not narrow:
            break
        widths[max(narrow, key=lambda k: widths[k])] -= 1

    def lines(cells: Sequence[str]) -> list[str]:
        parts = [
            textwrap.wrap(c, w, break_on_hyphens=False) or [""] if i in wrap else [c]
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        height = max(len(p) for p in parts)
        return [
            "  ".join(
                (p[k] if k < len(p) else "").ljust(w) for p, w in zip(parts, widths, strict=True)
            ).rstrip()
            for k in range(height)
        ]

    out = lines(header) + lines(["-" * w for w in widths])
    for r in rows:
        out.extend(lines(r))
    return out


def flow_dict(f: Flow) -> dict[str, Any]:
    """A flow of the spec as the reports and the page's data write it."""
    return {
        "ports": f.ports,
        "service": f.service,
        "direction": f.direction,
        "reason": f.reason,
        "expect": f.expect,
        "purpose": f.purpose,
    }
