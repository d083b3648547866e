"""The API's compact JSON report is encoded in many short calls (the C encoder holds the
interpreter lock for a whole call): the text is exactly json.dumps' text."""

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


@pytest.mark.parametrize("slice_", [1, 2, 3, 100])
def test_any_json_document_is_the_same_text(monkeypatch: pytest.MonkeyPatch, slice_: int) -> None:
    """Every shape the report has: nested dicts and lists, long lists inside short ones (a
    gate's blocking checks), empty ones, tuples, keys that are not strings, odd strings."""
    monkeypatch.setattr(json_report, "SLICE", slice_)
    monkeypatch.setattr(json_report, "_SHORT", 2)
    data = {
        "checks": [{"n": i, "s": '\x00"checks"\x00', "t": (i, None)} for i in range(5)],
        "gates": [{"blocking": [{"k": j} for j in range(7)], "e": []}, {"m": {}}],
        1: True,
        2.5: [1.5, -0.0, 1e300, "é\u2028"],
        False: {"": ""},
        None: [[[]], [[1, 2, 3]]],
        "x": "\x00",
    }
    assert json_report.chunked_dumps(data) == json.dumps(data)
    leaves: list[object] = [[], {}, [1] * 9, "s", 3, None]
    for leaf in leaves:
        assert json_report.chunked_dumps(leaf) == json.dumps(leaf)
