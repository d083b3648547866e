"""The interconnect's wire classes (PathSpec, PathMeasurement, a report's paths) through
BOTH decoders: the agent's (agent.wire.decode) and the controller's (pydantic)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from netcheck.agent.wire import (
    MAX_PATHS,
    PathMeasurement,
    PathSpec,
    Plan,
    RequestReport,
    WireError,
    decode,
    encode,
)

SPEC: dict[str, Any] = encode(
    PathSpec(9, "cloud_manager", "cm", "198.18.2.30", 6000, tuple(range(6000, 6011)))
)
MEAS: dict[str, Any] = encode(
    PathMeasurement(9, "pm", "cm", "198.18.2.30", 6000, 1.5, mtu=1400, route_mtu=1500,
                    icmp=False, black_hole=True, rtt_avg_s=0.01, loss=0.0, up_mbit_s=950.5)
)  # fmt: skip


def _with(base: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {**base, **kw}


def _report(paths: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "r", "kind": "interconnect", "state": "done", "at": 2.0, "paths": paths}


def _plan(paths: list[dict[str, Any]]) -> dict[str, Any]:
    return {"role": "prem_manager", "host": "pm", "address": "198.18.1.30", "listen": [],
            "checks": [], "paths": paths}  # fmt: skip


CASES: list[tuple[str, type, Any, bool]] = [
    ("a plan's path", Plan, _plan([SPEC]), True),
    ("a report's measurement", RequestReport, _report([MEAS]), True),
    ("nulls where not measured", RequestReport,
     _report([_with(MEAS, mtu=None, icmp=None, loss=None, up_mbit_s=None)]), True),
    ("65 throughput ports", Plan, _plan([_with(SPEC, throughput_ports=list(range(6000, 6065)))]),
     False),
    ("port 0", Plan, _plan([_with(SPEC, port=0)]), False),
    ("throughput seconds above 60", Plan, _plan([_with(SPEC, throughput_seconds=61)]), False),
    ("a path field unknown", Plan, _plan([_with(SPEC, colour="red")]), False),
    ("MTU below 68", RequestReport, _report([_with(MEAS, mtu=67)]), False),
    ("loss above 1", RequestReport, _report([_with(MEAS, loss=1.5)]), False),
    ("a string MTU", RequestReport, _report([_with(MEAS, mtu="1400")]), False),
    ("negative round trip", RequestReport, _report([_with(MEAS, rtt_avg_s=-0.1)]), False),
    ("too many paths", RequestReport, _report([MEAS] * (MAX_PATHS + 1)), False),
    ("an error text too long", RequestReport, _report([_with(MEAS, error="x" * 2001)]), False),
]  # fmt: skip


@pytest.mark.parametrize(("cls", "data", "ok"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_both_decoders_agree(cls: type, data: Any, ok: bool) -> None:
    text = json.dumps(data)
    try:
        decode(cls, json.loads(text))
        agent_ok = True
    except WireError:
        agent_ok = False
    try:
        TypeAdapter(cls).validate_json(text)
        controller_ok = True
    except ValidationError:
        controller_ok = False
    assert (agent_ok, controller_ok) == (ok, ok)
