"""One table of wire payloads, good and bad, through BOTH decoders: the agent's own
(``agent.wire.decode`` after ``json.loads``) and the controller's (pydantic
``TypeAdapter.validate_json``, as controller/ingest.py uses it). They must agree on every
payload: both accept it, or both refuse it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from netcheck.agent.wire import (
    CheckSpec,
    ListenerStatus,
    ListenSpec,
    PeerSeen,
    Plan,
    ProbeResult,
    Registration,
    ResultBatch,
    ResultsAck,
    ServiceCheck,
    WireError,
    decode,
    encode,
)
from netcheck.controller import ingest

RESULT: dict[str, Any] = encode(
    ProbeResult(
        check_id="4:pio-1>mgr-1:22",
        interaction=4,
        src_host="pio-1",
        src_address="198.18.1.10",
        dst_host="mgr-1",
        dst_address="198.18.1.30",
        port=22,
        state="open",
        mode="connect",
        attempts=1,
        started_at=1712345678.5,
        latency_s=0.002,
        service_check=ServiceCheck(service="tls", outcome="ok", tls_not_after=1.8e9),
        rst_from_firewall=None,
    )
)
BATCH: dict[str, Any] = encode(
    ResultBatch(
        role="pio",
        host="pio-1",
        results=(),
        listeners=(ListenerStatus(port=443, state="listening", since=1.5),),
        peers=(PeerSeen(port=443, src_address="198.18.1.30", at=2.5),),
        sent_at=3.5,
        dropped=2,
    )
)
REG: dict[str, Any] = encode(Registration("pio", "pio-1", "198.18.1.10", "0.1", "connect"))
PLAN: dict[str, Any] = encode(
    Plan(
        role="pio",
        host="pio-1",
        address="198.18.1.10",
        listen=(ListenSpec(port=32820, service="tcp", interactions=(4,)),),
        checks=(
            CheckSpec(
                check_id="4:pio-1>mgr-1:22",
                interaction=4,
                dst_role="prem_manager",
                dst_host="mgr-1",
                dst_address="198.18.1.30",
                port=22,
                service="ssh",
            ),
        ),
    )
)


def res(**change: Any) -> str:
    """A batch of one result with `change` applied to it, as JSON."""
    return json.dumps({**BATCH, "results": [{**RESULT, **change}]})


def with_(base: dict[str, Any], **change: Any) -> str:
    return json.dumps({**base, **change})


def first(base: dict[str, Any], key: str, **change: Any) -> str:
    """`base` with `change` applied to the first item of its list `key`."""
    return json.dumps({**base, key: [{**base[key][0], **change}]})


# (name, wire class, JSON text, accepted?)
CASES: list[tuple[str, type, str, bool]] = [
    ("a batch", ResultBatch, json.dumps(BATCH), True),
    ("a batch with a result", ResultBatch, res(), True),
    ("a registration", Registration, json.dumps(REG), True),
    ("a plan", Plan, json.dumps(PLAN), True),
    ("defaults may be left out", ResultBatch, '{"role": "pio", "host": "pio-1"}', True),
    ("an int where a float is expected", ResultBatch, with_(BATCH, sent_at=3), True),
    ("an int latency", ResultBatch, res(latency_s=0), True),
    ("null for an optional field", ResultBatch, res(service_check=None, latency_s=None), True),
    ("a boolean", ResultBatch, res(rst_from_firewall=True), True),
    ("port 1", ResultBatch, res(port=1), True),
    ("port 65535", ResultBatch, res(port=65535), True),
    ("attempts 0", ResultBatch, res(attempts=0), True),
    ("attempts 1000", ResultBatch, res(attempts=1000), True),
    ("plan timeouts as ints", Plan, with_(PLAN, timeout_s=2, period_s=60), True),
    ("a plan with its digest", Plan, with_(PLAN, plan_digest="ab" * 32), True),
    ("a results ack with a digest", ResultsAck, '{"accepted": 3, "plan_digest": ""}', True),
    ("a SYN peer with its TTL", ResultBatch, first(BATCH, "peers", how="syn", ttl=62), True),
    ("an accepted peer, said so", ResultBatch, first(BATCH, "peers", how="accepted"), True),
    ("peer TTL 0", ResultBatch, first(BATCH, "peers", how="syn", ttl=0), True),
    ("peer TTL 255", ResultBatch, first(BATCH, "peers", how="syn", ttl=255), True),
    ("peer TTL null", ResultBatch, first(BATCH, "peers", ttl=None), True),
    ("hop counts", ResultBatch, res(last_hop="198.18.2.2", last_hop_hops=2), True),
    ("responder hops 1 and 255", ResultBatch, res(responder_hops=1, last_hop_hops=255), True),
    ("hop counts null", ResultBatch, res(responder_hops=None, last_hop_hops=None), True),
    # -- refused: coercion
    ("a port as a string", ResultBatch, res(port="22"), False),
    ("a time as a string", ResultBatch, first(BATCH, "listeners", since="1.5"), False),
    ("a boolean as a string", ResultBatch, res(rst_from_firewall="yes"), False),
    ("a boolean as 1", ResultBatch, res(rst_from_firewall=1), False),
    ("a boolean as 0", ResultBatch, res(rst_from_firewall=0), False),
    ("true as an integer", ResultBatch, res(attempts=True), False),
    ("true as a float", ResultBatch, with_(BATCH, sent_at=True), False),
    ("a float as an integer", ResultBatch, res(port=22.0), False),
    ("a number as a string", ResultBatch, res(dst_host=7), False),
    ("a list where an object is expected", ResultBatch, res(service_check=[]), False),
    ("an object where a list is expected", ResultBatch, with_(BATCH, results={}), False),
    ("a string where a list is expected", ResultBatch, with_(BATCH, peers="x"), False),
    ("a float for wire_version", Registration, with_(REG, wire_version=1.0), False),
    ("a string in a plan's numbers", Plan, with_(PLAN, timeout_s="2"), False),
    ("an interaction as a string", Plan, first(PLAN, "checks", interaction="4"), False),
    ("listen interactions as strings", Plan, first(PLAN, "listen", interactions=["4"]), False),
    # -- refused: not finite
    ("NaN", ResultBatch, '{"role": "pio", "host": "pio-1", "sent_at": NaN}', False),
    ("Infinity", ResultBatch, '{"role": "pio", "host": "pio-1", "sent_at": Infinity}', False),
    (
        "-Infinity latency",
        ResultBatch,
        res().replace('"latency_s": 0.002', '"latency_s": -Infinity'),
        False,
    ),
    ("a float beyond range", ResultBatch, with_(BATCH).replace("3.5", "1e400"), False),
    ("NaN in a service check", ResultBatch, res().replace("1800000000.0", "NaN"), False),
    # -- refused: out of bounds
    ("port 0", ResultBatch, res(port=0), False),
    ("port 65536", ResultBatch, res(port=65536), False),
    ("a negative port", ResultBatch, first(BATCH, "peers", port=-1), False),
    ("listener port 70000", ResultBatch, first(BATCH, "listeners", port=70000), False),
    ("negative attempts", ResultBatch, res(attempts=-1), False),
    ("attempts beyond bound", ResultBatch, res(attempts=1001), False),
    ("attempts beyond SQLite", ResultBatch, res(attempts=2**64), False),
    ("interaction 0", ResultBatch, res(interaction=0), False),
    ("negative latency", ResultBatch, res(latency_s=-0.5), False),
    ("negative dropped", ResultBatch, with_(BATCH, dropped=-1), False),
    ("wire_version 0", Registration, with_(REG, wire_version=0), False),
    ("plan port 0", Plan, first(PLAN, "checks", port=0), False),
    ("plan listen port 65536", Plan, first(PLAN, "listen", port=65536), False),
    ("negative retries", Plan, with_(PLAN, retries=-1), False),
    ("concurrency 0", Plan, with_(PLAN, concurrency=0), False),
    ("negative timeout", Plan, with_(PLAN, timeout_s=-1), False),
    ("a plan digest of 65 characters", Plan, with_(PLAN, plan_digest="a" * 65), False),
    ("a plan digest as a number", Plan, with_(PLAN, plan_digest=7), False),
    ("a negative ack", ResultsAck, '{"accepted": -1}', False),
    ("peer TTL 256", ResultBatch, first(BATCH, "peers", how="syn", ttl=256), False),
    ("negative peer TTL", ResultBatch, first(BATCH, "peers", how="syn", ttl=-1), False),
    ("peer TTL as a float", ResultBatch, first(BATCH, "peers", how="syn", ttl=62.0), False),
    ("peer TTL as a string", ResultBatch, first(BATCH, "peers", how="syn", ttl="62"), False),
    ("an unknown peer how", ResultBatch, first(BATCH, "peers", how="guessed"), False),
    ("peer how null", ResultBatch, first(BATCH, "peers", how=None), False),
    ("last_hop_hops 0", ResultBatch, res(last_hop_hops=0), False),
    ("last_hop_hops 256", ResultBatch, res(last_hop_hops=256), False),
    ("responder_hops 0", ResultBatch, res(responder_hops=0), False),
    ("responder_hops as a string", ResultBatch, res(responder_hops="3"), False),
    ("responder_hops as true", ResultBatch, res(responder_hops=True), False),
    # -- refused: shape
    ("an unknown field", ResultBatch, with_(BATCH, colour="red"), False),
    ("an unknown field in a result", ResultBatch, res(colour="red"), False),
    ("a missing field", ResultBatch, '{"role": "pio"}', False),
    ("a missing field in a result", ResultBatch, res(attempts=None), False),
    ("an unknown state", ResultBatch, res(state="maybe"), False),
    ("an unknown mode", Registration, with_(REG, mode="ping"), False),
    ("an unknown service", Plan, first(PLAN, "checks", service="ftp"), False),
    ("null for a required string", Registration, with_(REG, host=None), False),
    ("not an object", ResultBatch, "[]", False),
    ("not JSON at all", ResultBatch, "{not json", False),
]


def agent_accepts(cls: type, text: str) -> bool:
    try:
        decode(cls, json.loads(text))
    except (ValueError, WireError):  # json.JSONDecodeError is a ValueError
        return False
    return True


def controller_accepts(cls: type, text: str) -> bool:
    adapter: TypeAdapter[Any] = TypeAdapter(cls)
    try:
        adapter.validate_json(text)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("cls", "text", "good"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_both_decoders_agree(cls: type, text: str, good: bool) -> None:
    assert (agent_accepts(cls, text), controller_accepts(cls, text)) == (good, good)


def test_the_controller_uses_these_rules() -> None:
    """ingest's adapters are plain TypeAdapters over the wire classes: the rules come from
    the classes' own configuration, so the table above is what the API enforces."""
    with pytest.raises(ingest.Refused, match="port"):
        ingest.parse_batch(res(port="22"))
    with pytest.raises(ingest.Refused, match="sent_at"):
        ingest.parse_batch(with_(BATCH, sent_at=True))
    assert ingest.parse_batch(res()).results[0].port == 22


def test_the_agent_names_the_field() -> None:
    with pytest.raises(WireError, match=r"ResultBatch\.results\[0\]\.port: 0 is less than 1"):
        decode(ResultBatch, json.loads(res(port=0)))
    with pytest.raises(WireError, match=r"listeners\[0\]\.since: expected a number"):
        decode(ResultBatch, json.loads(first(BATCH, "listeners", since="1.5")))
    with pytest.raises(WireError, match="not a finite number"):
        decode(ResultBatch, json.loads('{"role": "r", "host": "h", "sent_at": NaN}'))
    assert decode(ResultBatch, json.loads(with_(BATCH, sent_at=3))).sent_at == 3.0
