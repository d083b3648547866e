"""Gate decisions as the reports show them."""

from __future__ import annotations

from typing import Any

from netcheck.controller.gate import decision_to_dict
from netcheck.controller.model import GateDecision


def gate_dict(d: GateDecision) -> dict[str, Any]:
    """A gate decision as JSON data: the same shape as ``GET /api/v1/gate``."""
    return decision_to_dict(d)


def gate_who(d: GateDecision) -> str:
    return f"{d.mode} ({d.vm})" if d.vm else d.mode


def gate_headline(d: GateDecision) -> str:
    """``warm_vcd: NO-GO (12 blocking checks)``; undecided says why (its first reason:
    ``deployment: UNDECIDED (none of the 40 checks of mode 'deployment' tested yet)``)."""
    word = d.decision.upper()
    if d.decision == "go":
        return f"{gate_who(d)}: {word}"
    if d.decision == "undecided" and d.reasons:
        return f"{gate_who(d)}: {word} ({d.reasons[0]})"
    n = len(d.blocking)
    return f"{gate_who(d)}: {word} ({n} blocking check{'s' if n != 1 else ''})"
