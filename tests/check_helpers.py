"""Probe results for expected checks, as an agent would report them (for controller tests)."""

from __future__ import annotations

import dataclasses
from typing import Any

from netcheck.agent.wire import ProbeResult, ProbeState
from netcheck.controller.expand import ExpectedCheck


def result_for(
    c: ExpectedCheck, state: ProbeState = "open", *, started_at: float, **fields: Any
) -> ProbeResult:
    """The result of check ``c`` in ``state``; ``fields`` override any other field."""
    base = ProbeResult(
        check_id=c.spec.check_id,
        interaction=c.spec.interaction,
        src_host=c.src_host,
        src_address=c.src_address,
        dst_host=c.spec.dst_host,
        dst_address=c.spec.dst_address,
        port=c.spec.port,
        state=state,
        mode="connect",
        attempts=1 if state == "open" else 3,
        started_at=started_at,
        latency_s=0.0012 if state == "open" else None,
    )
    return dataclasses.replace(base, **fields)
