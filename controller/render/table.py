"""The plain text report, for a terminal: at most :data:`WIDTH` columns (long cells wrap)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from netcheck.controller.model import Evaluation, GateDecision
from netcheck.controller.render.common import (
    check_label,
    connections,
    counts_text,
    iso,
    not_passing,
    rollup_of,
    summary,
)
from netcheck.controller.render.common import text_table as table
from netcheck.controller.render.gates import gate_headline
from netcheck.controller.spec import Spec

WIDTH = 120


def _wrapped(text: str, lead: str) -> str:
    return textwrap.fill(
        text, WIDTH, initial_indent=lead, subsequent_indent=" " * len(lead), break_on_hyphens=False
    )


def render(spec: Spec, ev: Evaluation, gates: Sequence[GateDecision]) -> str:
    s = summary(ev)
    out = [
        f"netcheck report: site {ev.site}, {iso(ev.generated_at)}",
        f"{s.total} expected checks: {s.passed} pass, {s.failed} fail, {s.unknown} unknown"
        f" ({s.unexpected} unexpected results)",
        "",
        "Interactions",
    ]
    rows = []
    for inter in spec.interactions:
        r = rollup_of(ev, inter)
        rows.append(
            [
                str(inter.id),
                r.verdict.upper(),
                counts_text(r),
                str(r.failed),
                str(r.unknown),
                ", ".join(f"{a} -> {b}" for a, b in connections(inter)),
                inter.title,
            ]
        )
    out += table(["#", "verdict", "pass", "fail", "unknown", "roles", "title"], rows, WIDTH, (5, 6))
    bad = not_passing(ev.rows)
    out += ["", f"Failing and unknown checks ({len(bad)})"]
    if bad:
        out += table(
            ["verdict", "#", "check", "cause", "diagnosis"],
            [
                [
                    r.verdict.upper(),
                    str(r.check.spec.interaction),
                    check_label(r),
                    r.cause,
                    r.diagnosis,
                ]
                for r in bad
            ],
            WIDTH,
            (3, 4),
        )
    else:
        out.append("none")
    out += ["", "Gates"]
    for g in gates:
        out.append(f"  {gate_headline(g)}")
        out.extend(_wrapped(reason, "    - ") for reason in g.reasons)
        out.extend(_wrapped(w, "    ! ") for w in g.warnings)
    if not gates:
        out.append("  none asked")
    return "\n".join(out) + "\n"
