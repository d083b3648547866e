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

BOX_W, BOX_H = 176, 70
# The picture is drawn in these units and scaled to the width it gets on the page; at its
# narrowest (a 1,024 px window) a unit is ~0.9 px, so no text is smaller than 12.5 units.
WIDTH = 1088
COL_A, COL_B, COL_C, COL_D = 106, 390, 698, 982  # box centres: two columns per site
ROW_0, ROW_1, ROW_2, ROW_3, ROW_4 = 56, 181, 317, 453, 589
REGION_TOP, REGION_BOTTOM = 118, 638
# Centre of each known role's box.
POSITIONS: dict[str, tuple[float, float]] = {
    "user": (COL_B, ROW_0),
    "prem_vcenter": (COL_A, ROW_1),
    "pio": (COL_B, ROW_1),
    "prem_vm": (COL_A, ROW_2),
    "prem_esxi_manager": (COL_A, ROW_3),
    "prem_manager": (COL_B, ROW_3),
    "prem_esxi": (COL_A, ROW_4),
    "cloud_vcenter": (COL_C, ROW_1),
    "cloud_esxi": (COL_D, ROW_1),
    "cloud_cache": (COL_D, ROW_2),
    "cloud_manager": (COL_C, ROW_3),
    "cloud_vm": (COL_D, ROW_3),
}
# Where the label of an edge sits along it (0 = source end, 1 = destination end).
LABEL_AT: dict[int, float] = {5: 0.4, 6: 0.53}
# x range of each site's region (the user side sits above the on-premise site).
SITE_X: dict[str, tuple[float, float]] = {
    "user": (8, 488),
    "on_prem": (8, 488),
    "cloud": (600, 1080),
}
INTERCONNECT_X = (496, 592)
# An edge label's pill: at most this wide (its text: "2: 1000/1000"), this high.
LABEL_W_MAX, LABEL_H = 102, 24
# Text sizes of the picture, in its units (see page.css; tests read these).
NAME_SIZE, META_SIZE, LABEL_SIZE = 13.0, 12.5, 12.5
NAME_LINES = 3
_PAD = 12  # inside a box: left of the status dot, right of the text


def text_width(text: str, size: float, bold: bool = True) -> float:
    """An upper estimate of the width of ``text`` in the page's sans-serif font (DejaVu Sans
    when nothing else is installed; Helvetica-like fonts are narrower)."""
    em = 0.0
    for ch in text:
        if ch == " ":
            em += 0.35
        elif ch.isupper():
            em += 0.78
        elif ch.isdigit():
            em += 0.70
        elif ch.isalpha():
            em += 0.64
        else:
            em += 0.46
    return em * size * (1.0 if bold else 0.9)


def wrap(text: str, width: float, size: float, lines: int, bold: bool = True) -> tuple[str, ...]:
    """``text`` in at most ``lines`` lines of at most ``width`` units (words kept whole; a
    last line that does not fit ends with an ellipsis)."""
    out: list[str] = []
    for word in text.split():
        if out and text_width(f"{out[-1]} {word}", size, bold) <= width:
            out[-1] = f"{out[-1]} {word}"
        else:
            out.append(word)
    if len(out) > lines:
        out = [*out[: lines - 1], " ".join(out[lines - 1 :])]
    last = out[-1] if out else ""
    while last and text_width(last, size, bold) > width:
        last = last[:-2] + "…"
    return (*out[:-1], last) if out else ()


def name_lines(name: str) -> tuple[str, ...]:
    """A role's name as its box shows it."""
    return wrap(name, BOX_W - 22 - _PAD / 2, NAME_SIZE, NAME_LINES)


def label_width(text: str) -> float:
    """The pill of an edge label around ``text``."""
    return min(LABEL_W_MAX, round(text_width(text, LABEL_SIZE) + 14))


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
        per_row = max(1, int((hi - lo) // (BOX_W + 40)))
        k = per_site[site]
        per_site[site] += 1
        row, col = divmod(k, per_row)
        cx = lo + 20 + BOX_W / 2 + col * (BOX_W + 40)
        cy = REGION_BOTTOM + 50 + row * 130
        boxes[name] = Box(name, cx, cy)
        bottom = max(bottom, cy + BOX_H / 2 + 14)
    return boxes, bottom


def _span(xs: tuple[float, float]) -> tuple[float, float]:
    return xs[0], xs[1] - xs[0]


def layout(spec: Spec) -> Layout:
    boxes = {name: Box(name, *POSITIONS[name]) for name in spec.roles if name in POSITIONS}
    extra, bottom = _place_extra(spec, REGION_BOTTOM)
    boxes.update(extra)
    height = bottom + 8  # (the legend is the page's, under the picture)
    sites = {r.site for r in spec.roles.values()}
    (ux, uw), (px, pw) = _span(SITE_X["user"]), _span(SITE_X["on_prem"])
    cx, cw = _span(SITE_X["cloud"])
    regions = [
        Region("user", "User side", ux, 8, uw, REGION_TOP - 16),
        Region("on_prem", "On-premise site", px, REGION_TOP, pw, bottom - REGION_TOP),
        Region(
            "interconnect",
            "Site-to-site interconnect",
            INTERCONNECT_X[0],
            REGION_TOP,
            INTERCONNECT_X[1] - INTERCONNECT_X[0],
            bottom - REGION_TOP,
        ),
        Region("cloud", "Cloud site", cx, REGION_TOP, cw, bottom - REGION_TOP),
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
