"""The Markdown report, for a firewall change ticket: what fails, and what to open."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from netcheck.controller import interconnect
from netcheck.controller.model import CheckRow, Device, Evaluation, GateDecision, Side
from netcheck.controller.render.common import (
    connections,
    counts_text,
    iso,
    not_passing,
    rollup_of,
    summary,
)
from netcheck.controller.render.gates import gate_headline
from netcheck.controller.render.rules import NOT_STATED, Rule, device_heading, rules
from netcheck.controller.render.vms import markdown_section
from netcheck.controller.spec import Interaction, Spec

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
    action = "block" if c.spec.expect == "closed" else "allow"
    text = f"{action} TCP {c.src_address} -> {c.spec.dst_address}:{c.spec.port}"
    return text if c.direction_stated else f"{text} ({NOT_STATED})"


def _host(name: str, address: str) -> str:
    return f"{name} ({address})"


def duration_text(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``: how long, roughly."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def failing_since_text(row: CheckRow, ev: Evaluation) -> str:
    """``failing since 2026-12-01T10:00:00Z (40 min)`` for a failing check with history."""
    h = ev.history.get(row.check.spec.check_id)
    since = h.failing_since if h is not None and row.verdict == "fail" else None
    if since is None:
        return ""
    flaps = f"; flapped {h.flaps} times in the window" if h is not None and h.flaps else ""
    return f"failing since {iso(since)} ({duration_text(ev.generated_at - since)}){flaps}"


def rules_section(spec: Spec, failing: Sequence[CheckRow]) -> list[str]:
    """The rules to request, one table per enforcing device."""
    requests = rules(spec, failing)
    out = [f"## Firewall rules to request ({len(requests)})", ""]
    if not requests:
        return [*out, "None: every required flow passes or is not yet known."]
    # one table per device: a drop at or just past it and a reject from it go together
    by_device: dict[tuple[Device | None, Side | None], list[Rule]] = {}
    for r in requests:
        at = dataclasses.replace(r.device, at="at") if r.device is not None else None
        by_device.setdefault((at, r.side), []).append(r)
    for (device, side), group in by_device.items():
        out += [f"### {cell(device_heading(device, side))}", ""]
        out += _table(
            ["Rule", "Source", "Destination", "Ports", "Interaction", "Purpose", "Seen as"],
            [
                [
                    r.text,
                    _host(r.src_host, r.src_address),
                    _host(r.dst_host, r.dst_address),
                    r.ports,
                    f"{r.interaction}: {r.title}"
                    + ("" if r.direction_stated else f" ({NOT_STATED})"),
                    r.purpose,
                    ", ".join(r.causes)
                    + (
                        " (at or just past this hop)"
                        if r.device is not None and r.device.at == "after"
                        else ""
                    ),
                ]
                for r in group
            ],
        )
        out.append("")
    return out[:-1]


def roles_text(inter: Interaction) -> str:
    """Who connects to whom in an interaction, derived from its flows (not its title)."""
    return ", ".join(f"`{a}` -> `{b}`" for a, b in connections(inter))


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
                roles_text(inter),
                _ICON[r.verdict],
                counts_text(r),
                str(r.failed),
                str(r.unknown),
            ]
        )
    out += _table(["#", "Interaction", "Roles", "Verdict", "Pass", "Fail", "Unknown"], rows)
    failing = [r for r in ev.rows if r.verdict == "fail"]
    out += ["", *rules_section(spec, failing)]
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
                    ", ".join(x for x in (r.cause, failing_since_text(r, ev)) if x),
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
    out += ["", *markdown_section(spec, ev)]
    out += ["", *interconnect.markdown_section(ev.paths)]
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
