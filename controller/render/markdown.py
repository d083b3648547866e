"""The Markdown report, for a firewall change ticket: what fails, and what to open."""

from __future__ import annotations

from collections.abc import Sequence

from netcheck.controller.model import CheckRow, Evaluation, GateDecision
from netcheck.controller.ports import port_ranges
from netcheck.controller.render.common import counts_text, iso, not_passing, rollup_of, summary
from netcheck.controller.render.gates import gate_headline
from netcheck.controller.spec import Spec

_ICON = {"pass": "PASS", "fail": "**FAIL**", "unknown": "UNKNOWN"}


def cell(text: str) -> str:
    """Text made safe for one Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out


def what_to_open(row: CheckRow) -> str:
    c = row.check
    if c.spec.expect == "closed":
        return f"block TCP {c.src_address} -> {c.spec.dst_address}:{c.spec.port}"
    return f"allow TCP {c.src_address} -> {c.spec.dst_address}:{c.spec.port}"


def rules_to_request(failing: Sequence[CheckRow]) -> list[list[str]]:
    """One firewall rule per (action, source, destination), ports merged into ranges."""
    groups: dict[tuple[str, str, str], tuple[set[int], set[int], set[str]]] = {}
    for r in failing:
        c = r.check
        action = "block" if c.spec.expect == "closed" else "allow"
        ports, inters, causes = groups.setdefault(
            (action, c.src_address, c.spec.dst_address), (set(), set(), set())
        )
        ports.add(c.spec.port)
        inters.add(c.spec.interaction)
        causes.add(r.cause)
    return [
        [
            f"{action} TCP {src} -> {dst} port {port_ranges(ports)}",
            ", ".join(str(i) for i in sorted(inters)),
            ", ".join(sorted(causes)),
        ]
        for (action, src, dst), (ports, inters, causes) in sorted(groups.items())
    ]


def render(spec: Spec, ev: Evaluation, gates: Sequence[GateDecision]) -> str:
    s = summary(ev)
    out = [
        f"# netcheck report: site `{cell(ev.site)}`",
        "",
        f"Generated {iso(ev.generated_at)}.",
        "",
        "## Summary",
        "",
        f"- Expected checks: **{s.total}**: {s.passed} pass, {s.failed} fail, {s.unknown} unknown",
        f"- Unexpected results (no matching check): {s.unexpected}",
    ]
    out += [f"- Gate {cell(gate_headline(g))}" for g in gates]
    out += ["", "## Interactions", ""]
    rows = []
    for inter in spec.interactions:
        r = rollup_of(ev, inter)
        rows.append(
            [
                str(inter.id),
                inter.title,
                f"`{inter.source}` -> `{inter.destination}`",
                _ICON[r.verdict],
                counts_text(r),
                str(r.failed),
                str(r.unknown),
            ]
        )
    out += _table(["#", "Interaction", "Roles", "Verdict", "Pass", "Fail", "Unknown"], rows)
    failing = [r for r in ev.rows if r.verdict == "fail"]
    requests = rules_to_request(failing)
    out += ["", f"## Firewall rules to request ({len(requests)})", ""]
    if requests:
        out += _table(["Rule", "Interactions", "Seen as"], requests)
    else:
        out.append("None: every required flow passes or is not yet known.")
    out += ["", f"## Failing flows ({len(failing)})", ""]
    if failing:
        out += _table(
            ["#", "Source", "Destination", "Port", "What to open", "Cause", "Diagnosis"],
            [
                [
                    str(r.check.spec.interaction),
                    f"{r.check.src_host} ({r.check.src_address})",
                    f"{r.check.spec.dst_host} ({r.check.spec.dst_address})",
                    f"{r.check.spec.port}/tcp ({r.check.spec.service})",
                    what_to_open(r),
                    r.cause,
                    r.diagnosis,
                ]
                for r in failing
            ],
        )
    else:
        out.append("No failing flow.")
    unknown = [r for r in not_passing(ev.rows) if r.verdict == "unknown"]
    out += ["", f"## Not yet known ({len(unknown)})", ""]
    if unknown:
        out += _table(
            ["#", "Source", "Destination", "Port", "Cause", "Diagnosis"],
            [
                [
                    str(r.check.spec.interaction),
                    r.check.src_host,
                    r.check.spec.dst_host,
                    str(r.check.spec.port),
                    r.cause,
                    r.diagnosis,
                ]
                for r in unknown
            ],
        )
    else:
        out.append("Every check has a fresh result.")
    if gates:
        out += ["", "## Gates", ""]
        for g in gates:
            out.append(f"### {cell(gate_headline(g))}")
            out.append("")
            out += [f"- {cell(x)}" for x in g.reasons]
            out += [f"- warning: {cell(x)}" for x in g.warnings]
            if not g.reasons and not g.warnings:
                out.append("- every required check passes")
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"
