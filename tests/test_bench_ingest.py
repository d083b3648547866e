"""The ingest benchmark's agents send what a certificate's holder may send: the controller's
own checks (schema, authorization for that host, ids, clock) accept every batch it builds."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.ingest import RESULTS_PER_BATCH, ROLE, TOPOLOGY, batch_body, inventory_with_agents
from netcheck.agent.wire import encode
from netcheck.controller import authz
from netcheck.controller.expand import by_source, check_size, expand, plan_from_checks
from netcheck.controller.ingest import check_batch, check_clock, parse_batch
from netcheck.controller.inventory import Inventory, load_inventory
from netcheck.controller.refusals import Denied
from netcheck.controller.spec import Spec, load_spec


def _site(tmp_path: Path, n: int) -> tuple[Spec, Inventory]:
    spec = load_spec(str(TOPOLOGY))
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory_with_agents(n), sort_keys=False))
    return spec, load_inventory(path, spec)


def test_the_1000_agent_inventory_is_within_the_site_bounds(tmp_path: Path) -> None:
    spec, inv = _site(tmp_path, 1000)
    check_size(spec, inv)  # raises when the site would exceed the policy's caps
    assert len(inv.of_role(ROLE)) == 1000


def _plan(spec: Spec, inv: Inventory, host: str) -> dict[str, Any]:
    """The plan the controller answers at registration, as the agent reads it (JSON)."""
    h = next(x for x in inv.of_role(ROLE) if x.name == host)
    checks = by_source(expand(spec, inv))[(ROLE, host)]
    answer: dict[str, Any] = json.loads(
        json.dumps(encode(plan_from_checks(spec, ROLE, host, h.address, checks)))
    )
    return answer


def test_every_batch_passes_the_controllers_checks_for_its_own_host(tmp_path: Path) -> None:
    spec, inv = _site(tmp_path, 3)
    scopes = authz.scopes(spec, inv, by_source(expand(spec, inv)))
    now = time.time()
    for h in inv.of_role(ROLE):
        batch = parse_batch(batch_body(_plan(spec, inv, h.name), 0, now))
        sender = authz.Sender.of_certificate(ROLE, h.name, 1)
        authz.authorize_batch(batch, sender, scopes[(ROLE, h.name)])
        check_batch(batch, spec, inv)
        check_clock(batch, now)
        assert len(batch.results) == RESULTS_PER_BATCH
        assert len(batch.listeners) == 1


def test_another_hosts_certificate_may_not_send_it(tmp_path: Path) -> None:
    """The authorization the test above passes is not a no-op."""
    spec, inv = _site(tmp_path, 2)
    scopes = authz.scopes(spec, inv, by_source(expand(spec, inv)))
    first, second = inv.of_role(ROLE)
    batch = parse_batch(batch_body(_plan(spec, inv, first.name), 0, time.time()))
    with pytest.raises(Denied):
        authz.authorize_batch(
            batch, authz.Sender.of_certificate(ROLE, second.name, 2), scopes[(ROLE, first.name)]
        )
