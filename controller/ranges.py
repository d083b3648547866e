"""Failing checks merged into ranges: one per interaction, host pair, cause and run of ports.

A run is what a firewall rule (or an alert) names at once: the failing checks of one
interaction from one source host to one destination host, with the same cause, whose ports
follow each other in that host pair's expected ports with no check of another verdict or
cause between them. A blocked range of eleven ports is one range, not eleven; a pair whose
22 and 443 are dropped while 2376 passes is two. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
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


def runs(
    rows: Iterable[CheckRow],
    pair: Callable[[CheckRow], Hashable],
    same: Callable[[CheckRow], Hashable],
) -> list[list[CheckRow]]:
    """``rows`` grouped by ``pair`` (groups in the order they first appear), each group's rows
    by port cut into runs: a run ends where ``same`` changes or a port comes again."""
    pairs: dict[Hashable, list[CheckRow]] = {}
    for row in rows:
        pairs.setdefault(pair(row), []).append(row)
    out: list[list[CheckRow]] = []
    for group in pairs.values():
        group.sort(key=lambda r: r.check.spec.port)
        run: list[CheckRow] = []
        for row in group:
            last = run[-1] if run else None
            if last is not None and (
                same(row) != same(last) or row.check.spec.port == last.check.spec.port
            ):
                out.append(run)
                run = []
            run.append(row)
        if run:
            out.append(run)
    return out


def failing_ranges(rows: Iterable[CheckRow]) -> list[FailingRange]:
    """The failing checks of ``rows`` (every verdict, so a passing port splits a run), merged
    into runs, ordered by interaction, source host, destination host and first port."""
    ordered = sorted(rows, key=_pair)
    cut = runs(ordered, _pair, lambda r: (r.verdict, r.cause))
    return [_range(run) for run in cut if run[0].verdict == "fail"]


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
