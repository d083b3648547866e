"""The benchmark's output: sections of figures and targets, rendered as Markdown. Pure."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured
    gap: str = ""  # by how much it was missed, and what limits it


@dataclasses.dataclass(frozen=True)
class Section:
    title: str
    method: str  # what exactly was measured, how many runs
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    targets: tuple[Target, ...] = ()
    notes: tuple[str, ...] = ()


def _esc(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def table(headers: tuple[str, ...], rows: tuple[tuple[str, ...], ...]) -> str:
    lines = [
        "| " + " | ".join(_esc(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(_esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "not measured"}[met]


def render(title: str, machine: list[tuple[str, str]], sections: list[Section]) -> str:
    out = [f"# {title}", "", "## Machine", "", table(("", ""), tuple(machine)), ""]
    targets = [t for s in sections for t in s.targets]
    if targets:
        out += ["## Targets", ""]
        out.append(
            table(
                ("target", "goal", "measured", "verdict", "gap / limit"),
                tuple((t.name, t.goal, t.measured, verdict(t.met), t.gap) for t in targets),
            )
        )
        out.append("")
    for s in sections:
        out += [f"## {s.title}", "", s.method, "", table(s.headers, s.rows), ""]
        out += [f"- {n}" for n in s.notes]
        if s.notes:
            out.append("")
    return "\n".join(out)


def secs(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"


def ratio(a: float, b: float) -> str:
    """How many times `b` is `a` (b / a), for "netcheck is N x faster"."""
    return f"{b / a:.1f} x" if a > 0 else "-"
