"""A guest's facts in the store (layout 8): the newest picture per host by sent_at, written in
the batch's transaction; a batch without facts keeps it; only guest VM roles may send facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netcheck.agent.wire import Fact, ResultBatch
from netcheck.controller.ingest import Refused, check_batch, parse_batch
from netcheck.controller.inventory import load_inventory
from netcheck.controller.spec import load_spec
from netcheck.controller.store import Store

REPO = Path(__file__).resolve().parent.parent


def batch(at: float, facts: dict[str, str | bool]) -> ResultBatch:
    found = tuple(Fact(n, v, "file:/etc/os-release") for n, v in facts.items())
    return ResultBatch("prem_vm", "web-01", sent_at=at, facts=found)


def test_the_newest_picture_stays(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "nc.db")
    try:
        store.ingest(batch(10.0, {"os.name": "RHEL 7.4", "boot.matrix": "UEFI"}), now=11.0)
        store.ingest(batch(5.0, {"os.name": "RHEL 6.9"}), now=12.0)  # late, older: ignored
        store.ingest(ResultBatch("prem_vm", "web-01", sent_at=20.0), now=21.0)  # no facts
        got = store.guest_facts()["web-01"]
        assert (got.os_name, got.boot, got.reported_at) == ("RHEL 7.4", "UEFI", 10.0)
        store.ingest(batch(30.0, {"os.name": "RHEL 8.3", "net.static_ip": True}), now=31.0)
        got = store.snapshot().guest_facts["web-01"]
        assert got.os_name == "RHEL 8.3" and got.static_ip is True
        assert got.boot is None  # the newer picture has no boot.matrix: gone, not kept
        assert got.facts["os.name"].source == "file:/etc/os-release"
    finally:
        store.close()


def test_only_guest_roles_send_facts() -> None:
    spec = load_spec(REPO / "topology.yaml")
    inv = load_inventory(REPO / "inventory.example.yaml", spec)
    body = {"role": "pio", "host": "pio-1", "facts": [{"name": "a", "value": 1, "source": "s"}]}
    with pytest.raises(Refused) as err:
        check_batch(parse_batch(json.dumps(body)), spec, inv)
    assert err.value.status == 400 and "facts: a guest VM's (prem_vm, cloud_vm)" in str(err.value)
    ok = {**body, "role": "prem_vm", "host": "web-01"}
    check_batch(parse_batch(json.dumps(ok)), spec, inv)
