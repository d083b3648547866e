"""The topology page: an inline SVG of the HDM roles and interactions, a gate banner, a
details panel and the table of failures, in one self-contained HTML document.

The server renders everything (the page reads without JavaScript, e.g. an exported file);
a small inline script then re-applies the JSON report, fetched every ``refresh_seconds``
from ``/api/v1/report?format=json`` on the live page, so a selected edge stays selected.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2

from netcheck.controller.model import CheckRow, Evaluation, GateDecision, Verdict
from netcheck.controller.render.common import (
    check_label,
    counts_text,
    flow_directions,
    iso,
    not_passing,
    rollup_of,
    summary,
)
from netcheck.controller.render.gates import gate_who
from netcheck.controller.render.json_report import report_dict
from netcheck.controller.render.layout import Box, Layout, layout
from netcheck.controller.spec import Spec

_HERE = Path(__file__).resolve().parent.parent
REPORT_URL = "/api/v1/report?format=json"


@dataclass(frozen=True)
class RoleView:
    key: str
    box: Box
    name_lines: tuple[str, ...]
    meta: str
    agent: bool
    verdict: Verdict | None  # None: no check touches the role


@dataclass(frozen=True)
class EdgeView:
    interaction: int
    title: str
    path: str
    label: str
    label_x: float
    label_y: float
    verdict: Verdict
    forward: bool
    reverse: bool
    interconnect: bool


@dataclass(frozen=True)
class GateView:
    who: str
    decision: str
    blocking: int
    title: str


def _worst(verdicts: Sequence[Verdict]) -> Verdict | None:
    if not verdicts:
        return None
    if "fail" in verdicts:
        return "fail"
    return "unknown" if "unknown" in verdicts else "pass"


def _roles(spec: Spec, ev: Evaluation, lay: Layout) -> list[RoleView]:
    hosts: dict[str, set[str]] = {}
    for row in ev.rows:
        hosts.setdefault(row.check.src_role, set()).add(row.check.src_host)
        hosts.setdefault(row.check.spec.dst_role, set()).add(row.check.spec.dst_host)
    out = []
    for key, role in spec.roles.items():
        verdicts = [
            rollup_of(ev, i).verdict
            for i in spec.interactions
            if key in (i.source, i.destination) and rollup_of(ev, i).total
        ]
        n = len(hosts.get(key, ()))
        meta = f"{key} · {n} host{'s' if n != 1 else ''}"
        out.append(
            RoleView(
                key=key,
                box=lay.boxes[key],
                name_lines=tuple(textwrap.wrap(role.name, 22))[:2],
                meta=meta,
                agent=role.agent,
                verdict=_worst(verdicts),
            )
        )
    return out


def _edges(spec: Spec, ev: Evaluation, lay: Layout) -> list[EdgeView]:
    geo = {e.interaction: e for e in lay.edges}
    out = []
    for inter in spec.interactions:
        r = rollup_of(ev, inter)
        g = geo[inter.id]
        fwd, rev = flow_directions(inter)
        out.append(
            EdgeView(
                interaction=inter.id,
                title=inter.title,
                path=g.path,
                label=f"{inter.id}: {counts_text(r)}",
                label_x=g.label_x,
                label_y=g.label_y,
                verdict=r.verdict if r.total else "unknown",
                forward=fwd,
                reverse=rev,
                interconnect=inter.interconnect,
            )
        )
    return out


def _gates(gates: Sequence[GateDecision]) -> list[GateView]:
    return [
        GateView(gate_who(g), g.decision, len(g.blocking), "\n".join(g.reasons[:5])) for g in gates
    ]


def _script_json(data: object) -> str:
    """JSON that is safe inside a <script> element."""
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@cache
def _static(name: str) -> str:
    return (_HERE / "static" / name).read_text(encoding="utf-8")


def failure_rows(ev: Evaluation) -> list[CheckRow]:
    return not_passing(ev.rows)


def render_page(
    spec: Spec,
    ev: Evaluation,
    gates: Sequence[GateDecision],
    *,
    refresh_seconds: int | None,
) -> str:
    """The page as one HTML document (no external assets)."""
    lay = layout(spec)
    s = summary(ev)
    return (
        _env()
        .get_template("page.html.j2")
        .render(
            site=ev.site,
            generated_at=iso(ev.generated_at),
            summary=s,
            layout=lay,
            roles=_roles(spec, ev, lay),
            edges=_edges(spec, ev, lay),
            gates=_gates(gates),
            failures=[(r, check_label(r)) for r in failure_rows(ev)],
            refresh_seconds=refresh_seconds,
            report_url=REPORT_URL,
            report_json=_script_json(report_dict(spec, ev, gates)),
            css=_static("page.css"),
            js=_static("page.js"),
        )
    )
