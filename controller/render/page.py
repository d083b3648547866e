"""The topology page: an inline SVG of the HDM roles and interactions, a gate banner, a
details panel and the table of failures, in one self-contained HTML document.

The server renders everything (the page reads without JavaScript, e.g. an exported file);
a small inline script then re-applies the page's data (:mod:`page_data`: gates, roll-ups,
the first failing runs; kilobytes, not the whole report), fetched every ``refresh_seconds``
from ``/api/v1/page`` on the live page, so a selected edge stays selected. A click fetches
the details of what it selected; an exported page (no controller behind it) carries every
interaction's and role's details instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from netcheck.controller.inventory import Inventory
from netcheck.controller.model import CheckRow, Evaluation, GateDecision, Verdict
from netcheck.controller.render.common import (
    flow_directions,
    iso,
    not_passing,
    rollup_of,
    short_counts,
    summary,
)
from netcheck.controller.render.gates import gate_who
from netcheck.controller.render.layout import Box, Layout, label_width, layout, name_lines
from netcheck.controller.render.page_data import (
    LINKS,
    failure_runs,
    page_summary,
    snapshot_details,
)
from netcheck.controller.render.page_rows import PageRow
from netcheck.controller.spec import Spec

_HERE = Path(__file__).resolve().parent.parent
# The failing runs the table shows without JavaScript (an exported page: all up to this).
TABLE_ROWS_LIVE, TABLE_ROWS_SNAPSHOT = 100, 2000


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
    label_w: float
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
        meta = f"{n:,} host{'s' if n != 1 else ''}" + ("" if role.agent else " · no agent")
        out.append(
            RoleView(
                key=key,
                box=lay.boxes[key],
                name_lines=name_lines(role.name),
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
        label = f"{inter.id}: {short_counts(r)}"
        out.append(
            EdgeView(
                interaction=inter.id,
                title=inter.title,
                path=g.path,
                label=label,
                label_x=g.label_x,
                label_y=g.label_y,
                label_w=label_width(label),
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


@dataclass(frozen=True)
class TableRow:
    run: PageRow
    ports: str
    diagnosis: str
    hop: str


def _table(runs: Sequence[PageRow], n: int) -> list[TableRow]:
    from netcheck.controller.render.page_rows import hop_words

    return [TableRow(r, r.ports, r.diagnosis, hop_words(r.first)) for r in runs[:n]]


def render_page(
    spec: Spec,
    ev: Evaluation,
    gates: Sequence[GateDecision],
    *,
    refresh_seconds: int | None,
    runs: Sequence[PageRow] | None = None,
    extra: Mapping[str, Any] | None = None,
    inventory: Inventory | None = None,
) -> str:
    """The page as one HTML document (no external assets). ``runs``: the failing runs
    (:func:`page_data.failure_runs`, when already computed); ``extra``: the blocks of
    :func:`page_data.page_summary` (``config``, ``never_registered``); ``inventory``: the
    VMs' OS and boot mode where their guest agent did not report them."""
    lay = layout(spec)
    s = summary(ev)
    runs = failure_runs(ev) if runs is None else runs
    data = page_summary(spec, ev, gates, runs, extra, inventory)
    live = bool(refresh_seconds)
    shown = _table(runs, TABLE_ROWS_LIVE if live else TABLE_ROWS_SNAPSHOT)
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
            failures=shown,
            failures_total=len(runs),
            failing_checks=data["failures"]["checks"],
            config=data.get("config"),
            never_registered=data.get("never_registered"),
            refresh_seconds=refresh_seconds,
            vms=data["vms"],
            interconnect=data["interconnect"],
            links=LINKS,
            page_json=_script_json(data),
            details_json=None if live else _script_json(snapshot_details(spec, ev, inventory)),
            css=_static("page.css"),
            js=_static("page.js"),
        )
    )
