"""The controller hands the probe policy of topology.yaml to every agent's plan."""

from __future__ import annotations

from pathlib import Path

from netcheck.controller.expand import plan_for
from netcheck.controller.inventory import load_inventory
from netcheck.controller.spec import load_spec

REPO = Path(__file__).resolve().parent.parent


def test_plan_carries_the_adaptive_timeout_and_concurrency_policy() -> None:
    spec = load_spec(REPO / "topology.yaml")
    inventory = load_inventory(REPO / "inventory.example.yaml", spec)
    host = inventory.of_role("pio")[0]
    plan = plan_for(spec, inventory, "pio", host.name, host.address)
    assert plan.checks
    assert (plan.timeout_s, plan.min_timeout_s, plan.rtt_factor) == (2.0, 0.5, 10.0)
    assert plan.concurrency == 4096
    # The floor stays above 10 x HDM's 30 ms inter-site round trip requirement.
    assert plan.min_timeout_s > plan.rtt_factor * 0.030
