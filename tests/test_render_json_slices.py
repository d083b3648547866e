"""The API's compact JSON report is encoded in slices (the C encoder holds the interpreter
lock for a whole call): the text is exactly json.dumps' text."""

from __future__ import annotations

import json

import pytest
from render_helpers import gates_for, load, make_evaluation

from netcheck.agent.wire import check_id
from netcheck.controller.render import json_report


@pytest.mark.parametrize("slice_", [1, 7, 175, 176, 10_000])
def test_the_sliced_report_is_the_same_text(monkeypatch: pytest.MonkeyPatch, slice_: int) -> None:
    spec, inv = load()
    ev = make_evaluation(spec, inv, states={check_id(4, "pio-1", "prem-mgr", 2376): "refused"})
    gates = gates_for(spec, inv, ev)
    whole = json.dumps(json_report.report_dict(spec, ev, gates)) + "\n"
    monkeypatch.setattr(json_report, "SLICE", slice_)
    assert json_report.render(spec, ev, gates, compact=True) == whole
    assert len(json.loads(whole)["checks"]) == 175


def test_a_string_like_the_marker_stays_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_report, "SLICE", 2)
    data = {"checks": [{"n": i, "s": '\x00"checks"\x00'} for i in range(5)], "x": "\x00"}
    assert json_report.sliced_dumps(data, "checks") == json.dumps(data)
