"""Rendering: the topology page and the reports. Pure functions of an evaluation.

``render_report(spec, ev, gates, fmt, inventory)`` for fmt in table | json | markdown | junit |
html,
``render_page(spec, ev, gates, refresh_seconds=...)`` for the live page served at ``/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from netcheck.controller.inventory import Inventory
from netcheck.controller.model import Evaluation, GateDecision
from netcheck.controller.render import json_report, junit, markdown, table
from netcheck.controller.render.page import render_page
from netcheck.controller.spec import Spec

FORMATS: tuple[str, ...] = ("table", "json", "markdown", "junit", "html")
MEDIA_TYPES: dict[str, str] = {
    "table": "text/plain",
    "json": "application/json",
    "markdown": "text/markdown",
    "junit": "application/xml",
    "html": "text/html",
}

_Renderer = Callable[[Spec, Evaluation, Sequence[GateDecision]], str]


_RENDERERS: dict[str, _Renderer] = {
    "table": table.render,
    "json": json_report.render,
    "markdown": markdown.render,
    "junit": junit.render,
}


def render_report(
    spec: Spec,
    ev: Evaluation,
    gates: Sequence[GateDecision],
    fmt: str,
    inventory: Inventory | None = None,
) -> str:
    """The report in ``fmt`` (one of :data:`FORMATS`); ValueError for any other format. The
    HTML page also reads the ``inventory`` (the VMs' OS and boot mode where no guest agent
    reported them)."""
    if fmt == "html":
        return render_page(spec, ev, gates, refresh_seconds=None, inventory=inventory)
    try:
        renderer = _RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown report format {fmt!r} (formats: {', '.join(FORMATS)})") from None
    return renderer(spec, ev, gates)


__all__ = ["FORMATS", "MEDIA_TYPES", "render_page", "render_report"]
