"""The qualification schedule: which agents get an interconnect request, and when."""

from __future__ import annotations

from pathlib import Path

from netcheck.controller.interconnect import Qualification
from netcheck.controller.qualify_schedule import _last, due
from netcheck.controller.requests import RequestBook

AGENTS = [("prem_manager", "pm"), ("cloud_cache", "cc")]


def test_nothing_when_the_period_is_zero() -> None:
    assert due(Qualification(every_seconds=0), AGENTS, {}, 1000.0) == []


def test_each_agent_once_per_period_and_throughput_only_when_scheduled(tmp_path: Path) -> None:
    q = Qualification(every_seconds=3600)  # throughput_every_seconds 0: never
    first = due(q, AGENTS, {}, 10_000.0)
    assert [(r.kind, r.role, r.host) for r in first] == [
        ("interconnect", "prem_manager", "pm"),
        ("interconnect", "cloud_cache", "cc"),
    ]
    assert all(r.params[0].name == "throughput" and r.params[0].value == 0.0 for r in first)
    book = RequestBook.open(tmp_path / "store.db")
    try:
        book.add(first, "schedule")
        last = _last(book)
        assert due(q, AGENTS, last, 10_000.0 + 3599) == []
        again = due(q, AGENTS, last, 10_000.0 + 3600)
        assert len(again) == 2
        tq = Qualification(every_seconds=3600, throughput_every_seconds=86400)
        with_tp = due(tq, AGENTS[:1], last, 10_000.0 + 3600)
        assert with_tp[0].params[0].value == 1.0  # never had throughput: due
        book.add(with_tp, "schedule")
        last = _last(book)
        later = due(tq, AGENTS[:1], last, 10_000.0 + 7200)
        assert later[0].params[0].value == 0.0  # throughput again only after a day
    finally:
        book.close()
