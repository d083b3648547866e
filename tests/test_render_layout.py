"""The topology picture's geometry: nothing overlaps, and custom topologies still fit."""

from __future__ import annotations

import dataclasses
import re

from render_helpers import load

from netcheck.controller.render.layout import LABEL_H, LABEL_W_MAX, Box, EdgeGeom, Layout, layout
from netcheck.controller.spec import Flow, Interaction, Role, Spec

LABEL_W = LABEL_W_MAX  # the widest pill an edge label gets


def _points(e: EdgeGeom, n: int = 200) -> list[tuple[float, float]]:
    nums = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", e.path)]
    if " Q" in e.path:
        (x1, y1, cx, cy, x2, y2) = nums
        return [
            (
                (1 - t) ** 2 * x1 + 2 * (1 - t) * t * cx + t**2 * x2,
                (1 - t) ** 2 * y1 + 2 * (1 - t) * t * cy + t**2 * y2,
            )
            for t in (i / n for i in range(n + 1))
        ]
    (x1, y1, x2, y2) = nums
    return [(x1 + (x2 - x1) * i / n, y1 + (y2 - y1) * i / n) for i in range(n + 1)]


def _inside(box: Box, x: float, y: float, margin: float = 0) -> bool:
    return (
        box.x - margin < x < box.x + box.w + margin and box.y - margin < y < box.y + box.h + margin
    )


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def _label(e: EdgeGeom) -> tuple[float, float, float, float]:
    return (e.label_x - LABEL_W / 2, e.label_y - LABEL_H / 2, LABEL_W, LABEL_H)


def _check(spec: Spec, lay: Layout) -> None:
    boxes = list(lay.boxes.values())
    rects = {b.role: (b.x, b.y, b.w, b.h) for b in boxes}
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not _overlap(rects[a.role], rects[b.role]), (a.role, b.role)
    regions = {r.key: r for r in lay.regions}
    for b in boxes:
        r = regions[spec.roles[b.role].site]
        assert r.x <= b.x and b.x + b.w <= r.x + r.w, b.role
        assert r.y <= b.y and b.y + b.h <= r.y + r.h, b.role
    ends = {i.id: (i.source, i.destination) for i in spec.interactions}
    for e in lay.edges:
        for role, rect in rects.items():
            assert not _overlap(_label(e), rect), (e.interaction, role)
            if role in ends[e.interaction]:
                continue
            box = lay.boxes[role]
            assert not any(_inside(box, x, y, 2) for x, y in _points(e)), (e.interaction, role)
    for i, ea in enumerate(lay.edges):
        for eb in lay.edges[i + 1 :]:
            assert not _overlap(_label(ea), _label(eb)), (ea.interaction, eb.interaction)


def test_the_hdm_picture_has_no_overlaps() -> None:
    spec, _ = load()
    lay = layout(spec)
    _check(spec, lay)
    assert {e.interaction for e in lay.edges} == set(range(1, 16))
    assert [r.key for r in lay.regions] == ["user", "on_prem", "interconnect", "cloud"]
    # the interconnect lies between the sites, and interaction 9 crosses it
    on_prem, ic, cloud = lay.regions[1], lay.regions[2], lay.regions[3]
    assert on_prem.x + on_prem.w < ic.x < ic.x + ic.w < cloud.x
    xs = [x for x, _ in _points(next(e for e in lay.edges if e.interaction == 9))]
    assert min(xs) < ic.x and max(xs) > ic.x + ic.w


def test_a_custom_role_and_a_second_interaction_between_the_same_roles_fit() -> None:
    spec, _ = load()
    roles = dict(spec.roles)
    roles["cloud_backup"] = Role(name="Backup target", site="cloud", agent=True)
    extra = (
        Interaction(
            id=101,
            title="Cloud Manager to Backup target",
            source="cloud_manager",
            destination="cloud_backup",
            flows=(Flow(ports="873"),),
        ),
        Interaction(
            id=102,
            title="PIO again",
            source="pio",
            destination="prem_manager",
            flows=(Flow(ports="9443"),),
        ),
    )
    custom = dataclasses.replace(spec, roles=roles, interactions=spec.interactions + extra)
    lay = layout(custom)
    assert "cloud_backup" in lay.boxes
    assert lay.boxes["cloud_backup"].cy > 640
    bent = next(e for e in lay.edges if e.interaction == 102)
    assert " Q" in bent.path  # a second edge between pio and prem_manager bends away
    straight = next(e for e in lay.edges if e.interaction == 4)
    assert abs(bent.label_x - straight.label_x) > LABEL_W
