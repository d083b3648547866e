"""Where each role and interaction goes on the topology picture. Pure geometry.

The HDM roles have a hand-placed position each (the sites as regions: the user side on top,
the on-premise site on the left, the cloud site on the right, the site-to-site interconnect
between them), chosen so that no edge crosses a box and no two labels overlap. A role the
table does not know (a custom topology) gets a free slot in an extra row of its site.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from netcheck.controller.spec import Spec

BOX_W, BOX_H = 210, 62
WIDTH = 1420
REGION_TOP, REGION_BOTTOM = 140, 730
# Centre of each known role's box.
POSITIONS: dict[str, tuple[float, float]] = {
    "user": (500, 72),
    "prem_vcenter": (145, 210),
    "pio": (500, 210),
    "prem_vm": (145, 360),
    "prem_esxi_manager": (145, 510),
    "prem_manager": (500, 510),
    "prem_esxi": (145, 660),
    "cloud_vcenter": (1285, 210),
    "cloud_cache": (1085, 360),
    "cloud_manager": (895, 510),
    "cloud_esxi": (1285, 510),
    "cloud_vm": (1085, 660),
}
# Where the label of an edge sits along it (0 = source end, 1 = destination end).
LABEL_AT: dict[int, float] = {1: 0.5, 3: 0.42, 6: 0.3}
# x range of each site's region (the user side sits above the on-premise site).
SITE_X: dict[str, tuple[float, float]] = {
    "user": (20, 620),
    "on_prem": (20, 620),
    "cloud": (770, 1400),
}
INTERCONNECT_X = (632, 758)


@dataclass(frozen=True)
class Box:
    role: str
    cx: float
    cy: float
    w: float = BOX_W
    h: float = BOX_H

    @property
    def x(self) -> float:
        return self.cx - self.w / 2

    @property
    def y(self) -> float:
        return self.cy - self.h / 2


@dataclass(frozen=True)
class Region:
    key: str
    label: str
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class EdgeGeom:
    interaction: int
    path: str  # SVG path data, from the source role's box to the destination's
    label_x: float
    label_y: float


@dataclass(frozen=True)
class Layout:
    width: float
    height: float
    regions: tuple[Region, ...]
    boxes: dict[str, Box]
    edges: tuple[EdgeGeom, ...]


def _clip(box: Box, tx: float, ty: float, gap: float) -> tuple[float, float]:
    """Where the line from the box's centre towards (tx, ty) leaves the box (plus a gap)."""
    dx, dy = tx - box.cx, ty - box.cy
    if dx == 0 and dy == 0:
        return box.cx, box.cy
    scale = min(
        (box.w / 2) / abs(dx) if dx else math.inf,
        (box.h / 2) / abs(dy) if dy else math.inf,
    )
    length = math.hypot(dx, dy)
    scale += gap / length
    return box.cx + dx * scale, box.cy + dy * scale


def _place_extra(spec: Spec, height: float) -> tuple[dict[str, Box], float]:
    """Boxes for roles the table does not know: extra rows at the bottom of their site."""
    boxes: dict[str, Box] = {}
    per_site: Counter[str] = Counter()
    bottom = height
    for name, role in spec.roles.items():
        if name in POSITIONS:
            continue
        site = role.site if role.site in SITE_X else "on_prem"
        lo, hi = SITE_X[site]
        per_row = max(1, int((hi - lo) // (BOX_W + 30)))
        k = per_site[site]
        per_site[site] += 1
        row, col = divmod(k, per_row)
        cx = lo + 30 + BOX_W / 2 + col * (BOX_W + 30)
        cy = REGION_BOTTOM + 60 + row * 130
        boxes[name] = Box(name, cx, cy)
        bottom = max(bottom, cy + BOX_H / 2 + 40)
    return boxes, bottom


def layout(spec: Spec) -> Layout:
    boxes = {name: Box(name, *POSITIONS[name]) for name in spec.roles if name in POSITIONS}
    extra, bottom = _place_extra(spec, REGION_BOTTOM)
    boxes.update(extra)
    height = bottom + 70  # room for the legend
    sites = {r.site for r in spec.roles.values()}
    regions = [
        Region("user", "User side", 20, 20, 600, 104),
        Region("on_prem", "On-premise site", 20, REGION_TOP, 600, bottom - REGION_TOP),
        Region(
            "interconnect",
            "Site-to-site interconnect",
            INTERCONNECT_X[0],
            REGION_TOP,
            INTERCONNECT_X[1] - INTERCONNECT_X[0],
            bottom - REGION_TOP,
        ),
        Region("cloud", "Cloud site", 770, REGION_TOP, 630, bottom - REGION_TOP),
    ]
    regions = [r for r in regions if r.key == "interconnect" or r.key in sites]
    pairs: Counter[frozenset[str]] = Counter()
    edges = []
    for inter in spec.interactions:
        a, b = boxes[inter.source], boxes[inter.destination]
        pair = frozenset((inter.source, inter.destination))
        k = pairs[pair]
        pairs[pair] += 1
        # The k-th interaction between the same two roles bends away from the others.
        bend = 0.0 if k == 0 else 90.0 * ((k + 1) // 2) * (1 if k % 2 else -1)
        dx, dy = b.cx - a.cx, b.cy - a.cy
        length = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / length, dx / length
        mx, my = (a.cx + b.cx) / 2 + nx * bend * 2, (a.cy + b.cy) / 2 + ny * bend * 2
        x1, y1 = _clip(a, mx, my, 3)
        x2, y2 = _clip(b, mx, my, 5)
        t = LABEL_AT.get(inter.id, 0.5)
        if bend:
            path = f"M{x1:.1f},{y1:.1f} Q{mx:.1f},{my:.1f} {x2:.1f},{y2:.1f}"
            lx = (1 - t) ** 2 * x1 + 2 * (1 - t) * t * mx + t**2 * x2
            ly = (1 - t) ** 2 * y1 + 2 * (1 - t) * t * my + t**2 * y2
        else:
            path = f"M{x1:.1f},{y1:.1f} L{x2:.1f},{y2:.1f}"
            lx, ly = x1 + (x2 - x1) * t, y1 + (y2 - y1) * t
        edges.append(EdgeGeom(inter.id, path, round(lx, 1), round(ly, 1)))
    return Layout(WIDTH, height, tuple(regions), boxes, tuple(edges))
