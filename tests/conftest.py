"""Fixtures many test modules share: the shipped spec and the example site's inventory."""

from __future__ import annotations

from pathlib import Path

import pytest

from netcheck.controller.inventory import Inventory, load_inventory
from netcheck.controller.spec import Spec, load_spec

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def spec() -> Spec:
    """``topology.yaml`` as shipped."""
    return load_spec(REPO / "topology.yaml")


@pytest.fixture(scope="session")
def inv(spec: Spec) -> Inventory:
    """``inventory.example.yaml`` against it."""
    return load_inventory(REPO / "inventory.example.yaml", spec)
