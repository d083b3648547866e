"""Shared by the guest tests: the controller's view of facts a guest agent sent."""

from __future__ import annotations

from typing import Any

from netcheck.agent.wire import Fact
from netcheck.controller.facts import GuestFacts


def guest_facts(host: str, facts: list[dict[str, Any]], at: float = 0.0) -> GuestFacts:
    """The facts as the store gives them back (wire Facts by name)."""
    return GuestFacts(host, at, {f["name"]: Fact(**f) for f in facts})
