"""Checks as the page lists them: consecutive ports of one host pair merged into one row.

A row is one interaction, source host, destination host, direction, verdict, cause, side and
enforcing device, over a run of ports that follow each other in that pair's expected ports
(a check of another verdict or cause between two ports splits the run). The eleven ports of
a blocked ``5000-5010`` are one row; ``22`` and ``443`` dropped while ``2376`` passes are two.
Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from netcheck.controller.model import CheckRow, Device
from netcheck.controller.ports import port_ranges
from netcheck.controller.ranges import runs
from netcheck.controller.render.common import iso
from netcheck.controller.render.rules import device_heading

_Key = tuple[Any, ...]


@dataclass(frozen=True)
class PageRow:
    """A run of checks with one verdict and cause between one host pair (by port)."""

    rows: tuple[CheckRow, ...]

    @property
    def first(self) -> CheckRow:
        return self.rows[0]

    @property
    def ports(self) -> str:
        return port_ranges(r.check.spec.port for r in self.rows)

    @property
    def diagnosis(self) -> str:
        """The diagnosis, its port replaced by the range when every port reads the same."""
        first = self.first
        if len(self.rows) == 1:
            return first.diagnosis
        if len({_shape(r) for r in self.rows}) == 1:
            return _port_free(first).replace(_PORT, self.ports)
        return (
            f"{first.diagnosis} (port {first.check.spec.port}; the other"
            f" {len(self.rows) - 1} with the same cause)"
        )


_PORT = "\x00port\x00"


def _port_free(row: CheckRow) -> str:
    """The diagnosis with this row's port taken out."""
    return re.sub(rf"(?<![\d.]){row.check.spec.port}(?![\d.])", _PORT, row.diagnosis)


def _shape(row: CheckRow) -> str:
    """What two diagnoses of one run must share: all but the port, latencies and ages."""
    return re.sub(r"\d+(?:\.\d+)? m?s\b", "", _port_free(row))


def _device_key(d: Device | None) -> _Key:
    return (None,) if d is None else (d.address, d.hops, d.name, d.at)


def _pair(row: CheckRow) -> _Key:
    c = row.check
    return (c.spec.interaction, c.src_host, c.spec.dst_host, c.direction)


def _run(row: CheckRow) -> _Key:
    return (row.verdict, row.cause, row.side, _device_key(row.device))


def merged(rows: Iterable[CheckRow]) -> list[PageRow]:
    """``rows`` (any verdicts) merged into runs, each pair's runs by port, pairs in the
    order they first appear."""
    return [PageRow(tuple(run)) for run in runs(rows, _pair, _run)]


def not_passing_merged(rows: Sequence[CheckRow]) -> list[PageRow]:
    """The runs of failing checks first, then the unknown ones. Runs are cut by every verdict
    (a passing port between two failing ones splits them)."""
    runs = merged(rows)
    return [r for r in runs if r.first.verdict == "fail"] + [
        r for r in runs if r.first.verdict == "unknown"
    ]


def hop_words(row: CheckRow) -> str:
    """Where the check was stopped (the enforcing hop), or "" when not known / passing."""
    if row.verdict == "pass" or (row.device is None and row.side is None):
        return ""
    return device_heading(row.device, row.side)


def _device(d: Device | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {"address": d.address, "hops": d.hops, "name": d.name or None, "at": d.at}


def row_dict(run: PageRow) -> dict[str, Any]:
    """A run as the page's script reads it."""
    r = run.first
    c = r.check
    lat = [x.result.latency_s for x in run.rows if x.result and x.result.latency_s is not None]
    observed = [x.result.started_at for x in run.rows if x.result]
    return {
        "check_id": c.spec.check_id,
        "count": len(run.rows),
        "interaction": c.spec.interaction,
        "verdict": r.verdict,
        "cause": r.cause,
        "side": r.side,
        "src_role": c.src_role,
        "src_host": c.src_host,
        "src_address": c.src_address,
        "dst_role": c.spec.dst_role,
        "dst_host": c.spec.dst_host,
        "dst_address": c.spec.dst_address,
        "ports": run.ports,
        "service": c.spec.service,
        "direction": c.direction,
        "direction_stated": c.direction_stated,
        "diagnosis": run.diagnosis,
        "hop": hop_words(r),
        "device": _device(r.device),
        "latency_ms": [round(min(lat) * 1000, 1), round(max(lat) * 1000, 1)] if lat else None,
        "observed_at": iso(max(observed)) if observed else None,
    }
