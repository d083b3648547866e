"""The guest agent's payloads are the wire contract's, unchanged: both decoders (the agent's
wire.decode and the controller's pydantic one, with ingest's checks) take them as they are."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from guest_trees import guests
from pydantic import TypeAdapter, ValidationError

from netcheck.agent.guest import payloads, probes
from netcheck.agent.guest.facts import collect
from netcheck.agent.guest.facts.base import Root
from netcheck.agent.guest.listeners import StandIns
from netcheck.agent.guest.plan import Plan
from netcheck.agent.wire import Registration, ResultBatch, WireError, decode
from netcheck.controller.ingest import Refused, parse_batch, parse_registration
from netcheck.controller.inventory import load_inventory
from netcheck.controller.spec import load_spec

REPO = Path(__file__).resolve().parent.parent


def test_a_guests_round_in_the_wire_shapes(tmp_path: Path) -> None:
    standins = StandIns("127.0.0.1")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    open_port = listener.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    plan = Plan({
        "role": "prem_vm", "host": "web-01", "address": "127.0.0.1", "listen": [
            {"port": closed_port, "service": "https"}, {"port": open_port, "service": "tcp"}
        ],
        "checks": [{
            "check_id": payloads.check_id(15, "web-01", "pio-1", p), "interaction": 15,
            "dst_role": "pio", "dst_host": "pio-1", "dst_address": "127.0.0.1", "port": p,
            "service": "tcp",
        } for p in (open_port, closed_port)],
        "timeout_s": 1.0, "retries": 0,
    })  # fmt: skip
    try:
        standins.hold(plan.listen)
        status = {s["port"]: s["state"] for s in standins.statuses()}
        assert status == {closed_port: "listening", open_port: "occupied"}
        results = probes.run_round(plan)
        assert [r["state"] for r in results] == ["open", "open"]  # the stand-in answers too
        for _ in range(100):
            peers = standins.take_peers()
            if peers:
                break
            time.sleep(0.01)
        assert [(p["port"], p["src_address"]) for p in peers] == [(closed_port, "127.0.0.1")]
        standins.hold([])
        assert standins.statuses()[0]["state"] == "closed"
        guest = guests()[0]
        facts = collect(Root(str(guest.write(tmp_path / "g")), kernel=guest.kernel))
        body = payloads.batch(
            "prem_vm", "web-01", results, standins.statuses(), peers, facts, time.time()
        )
    finally:
        standins.close()
        listener.close()
    text = json.dumps(body)
    batch = decode(ResultBatch, json.loads(text))
    assert batch == TypeAdapter(ResultBatch).validate_json(text) == parse_batch(text)
    assert len(batch.facts) == len(facts) and batch.results[0].mode == "connect"
    reg = json.dumps(payloads.registration("prem_vm", "web-01", "198.18.1.101"))
    spec = load_spec(REPO / "topology.yaml")
    inv = load_inventory(REPO / "inventory.example.yaml", spec)
    assert parse_registration(reg, spec, inv) == decode(Registration, json.loads(reg))


def test_refused_connect_states() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert probes.connect_once("127.0.0.1", port, 1.0)[0] == "refused"


FACTS = [
    ({"name": "boot.secure_boot", "value": True, "source": "file:/sys"}, True),
    ({"name": "space.boot_free_bytes", "value": 2**40, "source": "statvfs:/boot"}, True),
    (
        {"name": "os.name", "value": "RHEL 7.4", "source": "file:/etc/os-release", "detail": ""},
        True,
    ),
    ({"name": "iscsi.initrd_module", "value": None, "source": "file:/boot"}, True),
    ({"name": "x", "value": 1.5, "source": "s"}, False),  # no floats
    ({"name": "x", "value": [1], "source": "s"}, False),
    ({"name": "x" * 129, "value": 1, "source": "s"}, False),
    ({"name": "x", "value": "v" * 1025, "source": "s"}, False),
    ({"name": "x", "value": 1, "source": "s" * 257}, False),
    ({"name": "x", "value": 1}, False),  # how it was found is required
    ({"name": "x", "value": 1, "source": "s", "extra": 1}, False),
]


@pytest.mark.parametrize(("fact", "good"), FACTS)
def test_facts_through_both_decoders(fact: dict[str, object], good: bool) -> None:
    body = {"role": "cloud_vm", "host": "cloud-vm-1", "facts": [fact]}
    outcomes = []
    readers: list[Callable[[], object]] = [
        lambda: decode(ResultBatch, body),
        lambda: TypeAdapter(ResultBatch).validate_json(json.dumps(body)),
    ]
    for read in readers:
        try:
            read()
            outcomes.append(True)
        except (WireError, ValidationError):
            outcomes.append(False)
    assert outcomes == [good, good]


def test_at_most_512_facts_a_batch() -> None:
    many = [{"name": f"n{i}", "value": i, "source": "s"} for i in range(513)]
    with pytest.raises(Refused) as err:
        parse_batch(json.dumps({"role": "cloud_vm", "host": "cloud-vm-1", "facts": many}))
    assert err.value.status == 413
