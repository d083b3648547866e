"""Failing checks merged into ranges: one per interaction, host pair, cause and run of ports.

A run is what a firewall rule (or an alert) names at once: the failing checks of one
interaction from one source host to one destination host, with the same cause, whose ports
follow each other in that host pair's expected ports with no check of another verdict or
cause between them. A blocked range of eleven ports is one range, not eleven; a pair whose
22 and 443 are dropped while 2376 passes is two. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from netcheck.controller.model import Cause, CheckRow
from netcheck.controller.ports import port_ranges


@dataclass(frozen=True)
class FailingRange:
    """Consecutive failing checks of one interaction and host pair with one cause."""

    interaction: int
    src_role: str
    src_host: str
    src_address: str
    dst_role: str
    dst_host: str
    dst_address: str
    cause: Cause
    rows: tuple[CheckRow, ...]  # by port

    @property
    def ports(self) -> str:
        """The ports as ranges: ``"22, 443, 8000-8010"``."""
        return port_ranges(r.check.spec.port for r in self.rows)


_PairKey = tuple[int, str, str, str, str]


def _pair(row: CheckRow) -> _PairKey:
    c = row.check
    return (c.spec.interaction, c.src_role, c.src_host, c.spec.dst_role, c.spec.dst_host)


def failing_ranges(rows: Iterable[CheckRow]) -> list[FailingRange]:
    """The failing checks of ``rows`` (every verdict, so a passing port splits a run), merged
    into runs, ordered by interaction, source host, destination host and first port."""
    pairs: dict[_PairKey, list[CheckRow]] = {}
    for row in rows:
        pairs.setdefault(_pair(row), []).append(row)
    out: list[FailingRange] = []
    for key in sorted(pairs):
        run: list[CheckRow] = []
        for row in sorted(pairs[key], key=lambda r: r.check.spec.port):
            if run and (row.verdict != "fail" or row.cause != run[0].cause):
                out.append(_range(run))
                run = []
            if row.verdict == "fail":
                run.append(row)
        if run:
            out.append(_range(run))
    return out


def _range(run: list[CheckRow]) -> FailingRange:
    c = run[0].check
    return FailingRange(
        interaction=c.spec.interaction,
        src_role=c.src_role,
        src_host=c.src_host,
        src_address=c.src_address,
        dst_role=c.spec.dst_role,
        dst_host=c.spec.dst_host,
        dst_address=c.spec.dst_address,
        cause=run[0].cause,
        rows=tuple(run),
    )
