"""The diagnosis of a failing check as data: which side, which device (address, hop, name),
and the address NAT showed, from both ends of the path; and only what the evidence says."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_evaluate import MGR, NOW, PIO, observed, result

from netcheck.agent.wire import ListenerStatus, PeerSeen, ProbeResult, check_id
from netcheck.controller.evaluate import evaluate
from netcheck.controller.expand import expected
from netcheck.controller.inventory import Inventory, load_inventory
from netcheck.controller.model import AgentSeen, CheckHistory, Device
from netcheck.controller.spec import Spec, load_spec

REPO = Path(__file__).resolve().parent.parent

NETWORK = """
network:
  on_prem:
    - name: prem-rt
      kind: router
      addresses: [198.18.1.1, 198.18.254.1]
  cloud:
    - name: cloud-fw
      kind: firewall
      addresses: [198.18.254.2]
"""


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(REPO / "topology.yaml")


@pytest.fixture(scope="module")
def inv(spec: Spec, tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    path = tmp_path_factory.mktemp("inv") / "inventory.yaml"
    path.write_text((REPO / "inventory.example.yaml").read_text() + NETWORK)
    return load_inventory(path, spec)


SSH = check_id(4, "pio-1", "prem-mgr", 22)
TLS = check_id(4, "pio-1", "prem-mgr", 443)
VC = check_id(2, "pio-1", "prem-vc", 443)
PIO_ADDR, MGR_ADDR, NAT_ADDR = "198.18.1.10", "198.18.1.30", "198.19.77.5"
LISTEN22 = {"prem-mgr": [ListenerStatus(22, "listening", NOW - 100)]}


def syn(port: int, src: str, ttl: int = 63, at: float = NOW - 9) -> PeerSeen:
    return PeerSeen(port, src, at, how="syn", ttl=ttl)


# The destination's capture is on and reported after the probe: it saw pio-1's SYN on 443.
CAPTURING = {"prem-mgr": [syn(443, PIO_ADDR)]}


@dataclass
class Case:
    name: str
    check: str
    results: list[ProbeResult]
    cause: str
    side: str | None
    device: Device | None
    words: str
    seen_from: tuple[str, ...] = ()
    listeners: dict[str, list[ListenerStatus]] = field(default_factory=dict)
    peers: dict[str, list[PeerSeen]] = field(default_factory=dict)
    agents: list[AgentSeen] = field(default_factory=lambda: [PIO, MGR])
    history: dict[str, CheckHistory] = field(default_factory=dict)


def r22(state: str, **kw: object) -> list[ProbeResult]:
    return [result(4, "pio-1", "prem-mgr", 22, state, **kw)]


def mgr_seen(last_report: float, peers_until: float | None = None) -> AgentSeen:
    """prem-mgr's agent (capturing SYNs), as the controller last heard from it."""
    return AgentSeen("prem_manager", "prem-mgr", "", "syn", "1", last_report, peers_until)


def unreported(name: str, mgr: AgentSeen) -> Case:
    """A drop whose SYN the destination's capture has not told of (``mgr``): no side."""
    return Case(
        name,
        SSH,
        r22("filtered", mode="syn", last_hop="198.18.1.1"),
        "dropped",
        None,
        Device("198.18.1.1", None, "prem-rt", "after"),
        "last hop that answered 198.18.1.1 (prem-rt)",
        peers=CAPTURING,
        agents=[PIO, mgr],
    )


def steady(since: float) -> dict[str, CheckHistory]:
    """SSH's history: failing since NOW - 1000, its state last changed at ``since``."""
    return {SSH: CheckHistory(NOW - 1000, since, "fail", NOW - 1000)}


# A SYN-mode drop whose traceroute's last answer came from prem-rt (hop 1); prem-mgr reported
# after the probe, its peers only up to before it; pio-1's SYN of a probe a period earlier.
SYN_DROP = r22("filtered", mode="syn", last_hop="198.18.1.1", last_hop_hops=1)
BEHIND = [PIO, mgr_seen(NOW - 1, NOW - 9)]
EARLIER_SYN = {"prem-mgr": [syn(22, PIO_ADDR, at=NOW - 310)]}


CASES = [
    Case(
        "router drop, the destination's capture never saw the SYN",
        SSH,
        r22("filtered", mode="syn", last_hop="198.18.1.1", last_hop_hops=1),
        "dropped",
        "network",
        Device("198.18.1.1", 1, "prem-rt", "after"),
        "dropped in the network: no answer from 198.18.1.30:22 after 3 tries, and prem-mgr's "
        "interface never saw the SYN; the last hop that answered was 198.18.1.1 "
        "(prem-rt, hop 1): at or just past it",
        peers=CAPTURING,
    ),
    Case(
        "router drop, no capture at the destination: the side is not known",
        SSH,
        r22("filtered", mode="connect", last_hop="198.18.254.2", last_hop_hops=2),
        "dropped",
        None,
        Device("198.18.254.2", 2, "cloud-fw", "after"),
        "dropped: no answer from 198.18.1.30:22 after 3 tries; last hop that answered "
        "198.18.254.2 (cloud-fw, hop 2)",
    ),
    # The destination's capture saw nothing of this probe yet, as far as it has told:
    unreported(
        "drop, capture on but the destination has not reported since the probe",
        mgr_seen(NOW - 9, NOW - 9),
    ),
    # a batch after the probe, built before its SYN arrived (an empty one that carried older
    # peers), says nothing of the SYN;
    unreported(
        "drop, the destination reported since the probe but not its peers since",
        mgr_seen(NOW - 1, NOW - 9),
    ),
    unreported(
        "drop, an older agent that does not say up to when its peers are complete",
        mgr_seen(NOW - 1),
    ),
    Case(
        "old agent in connect mode, nothing else known",
        SSH,
        r22("filtered"),
        "dropped",
        None,
        None,
        "dropped: no answer from 198.18.1.30:22 after 3 tries",
    ),
    Case(
        "host-firewall drop: the SYN reached the destination's interface",
        SSH,
        r22("filtered", mode="syn", last_hop="198.18.1.1", last_hop_hops=1),
        "dropped",
        "host",
        Device(MGR_ADDR, 2, "prem-mgr"),
        "dropped by the destination's own firewall: prem-mgr's interface saw the SYN from "
        "198.18.1.10",
        peers={"prem-mgr": [syn(22, PIO_ADDR)]},
    ),
    # The newest probe (NOW - 10) is not covered yet: prem-mgr's peers are reported up to
    # NOW - 9 only (BEHIND). An earlier probe's SYN (one period of 300 s back) may stand in.
    Case(
        "host-firewall drop, the newest probe's SYN not reported yet: an earlier one stands in",
        SSH,
        SYN_DROP,
        "dropped",
        "host",
        Device(MGR_ADDR, 2, "prem-mgr"),
        "dropped by the destination's own firewall: prem-mgr's interface saw the SYN from "
        "198.18.1.10",
        peers=EARLIER_SYN,
        agents=BEHIND,
        history=steady(since=NOW - 1000),
    ),
    Case(
        "not reported yet, and the check's state changed after the previous SYN: none stands",
        SSH,
        SYN_DROP,
        "dropped",
        None,
        Device("198.18.1.1", 1, "prem-rt", "after"),
        "dropped: no answer from 198.18.1.30:22 after 3 tries; last hop that answered",
        peers=EARLIER_SYN,
        agents=BEHIND,
        history=steady(since=NOW - 100),
    ),
    Case(
        "reported past the newest probe: an earlier SYN does not stand in for its silence",
        SSH,
        SYN_DROP,
        "dropped",
        "network",
        Device("198.18.1.1", 1, "prem-rt", "after"),
        "and prem-mgr's interface never saw the SYN",
        peers=EARLIER_SYN,
        history=steady(since=NOW - 1000),
    ),
    Case(
        "host-firewall drop, the SYN's TTL says nothing (a traceroute probe's), no hop known",
        SSH,
        r22("filtered", mode="syn"),
        "dropped",
        "host",
        Device(MGR_ADDR, None, "prem-mgr"),
        "prem-mgr's interface saw the SYN from 198.18.1.10",
        peers={"prem-mgr": [syn(22, PIO_ADDR, ttl=2)]},
    ),
    Case(
        "a SYN seen before this probe is no evidence for it",
        SSH,
        r22("filtered", mode="syn"),
        "dropped",
        "network",
        None,
        "never saw the SYN; no hop answered a traceroute",
        peers={"prem-mgr": [syn(22, PIO_ADDR, at=NOW - 60), syn(443, PIO_ADDR)]},
    ),
    Case(
        "host-firewall drop behind NAT",
        SSH,
        r22("filtered", mode="syn"),
        "dropped",
        "host",
        Device(MGR_ADDR, 3, "prem-mgr"),
        "saw the SYN arrive from 198.19.77.5, not 198.18.1.10 (NAT)",
        seen_from=(NAT_ADDR,),
        peers={"prem-mgr": [syn(22, NAT_ADDR, ttl=62)]},
    ),
    Case(
        "router reset: the reset came from the router's own address",
        SSH,
        r22("refused", mode="syn", responder="198.18.254.1", responder_hops=2),
        "rejected",
        "network",
        Device("198.18.254.1", 2, "prem-rt"),
        "the reset came from 198.18.254.1 (prem-rt, hop 2), not from 198.18.1.30",
        listeners=LISTEN22,
    ),
    Case(
        "router reset forged in the destination's name (TTL), listener up",
        SSH,
        r22("refused", mode="syn", responder=MGR_ADDR, responder_hops=1, rst_from_firewall=True),
        "rejected",
        "network",
        Device(None, 1),
        "reset forged by a device 1 hop from the source, in the name of the destination, "
        "while the destination agent was listening on 22",
        listeners=LISTEN22,
    ),
    Case(
        "reset in the destination's name, and its capture never saw the SYN",
        SSH,
        r22("refused", mode="connect", responder=MGR_ADDR),
        "rejected",
        "network",
        Device(None, None),
        "reset forged by a device on the path, in the name of the destination, while the "
        "destination agent was listening on 22; its interface never saw the SYN",
        listeners=LISTEN22,
        peers=CAPTURING,
    ),
    Case(
        "host-firewall reset: listening, and the SYN arrived",
        SSH,
        r22("refused", mode="syn", responder=MGR_ADDR, responder_hops=2),
        "rejected",
        "host",
        Device(MGR_ADDR, 2, "prem-mgr"),
        "rejected by the destination's own firewall: reset while the destination agent was "
        "listening on 22; its interface saw the SYN arrive",
        listeners=LISTEN22,
        peers={"prem-mgr": [syn(22, PIO_ADDR)]},
    ),
    Case(
        "host-firewall reset from the TTL alone (no capture)",
        SSH,
        r22("refused", mode="syn", rst_from_firewall=False),
        "rejected",
        "host",
        Device(MGR_ADDR, None, "prem-mgr"),
        "rejected by the destination's own firewall",
        listeners=LISTEN22,
    ),
    Case(
        "a reset with nothing else known names no side",
        SSH,
        r22("refused"),
        "rejected",
        None,
        None,
        "rejected by a firewall: reset while the destination agent was listening on 22",
        listeners=LISTEN22,
    ),
    Case(
        "admin-prohibited from a router",
        SSH,
        r22("prohibited", responder="198.18.1.1", responder_hops=1),
        "prohibited",
        "network",
        Device("198.18.1.1", 1, "prem-rt"),
        "ICMP administratively prohibited from 198.18.1.1 (prem-rt, hop 1)",
    ),
    Case(
        "admin-prohibited from the destination's own firewall",
        SSH,
        r22("prohibited", responder=MGR_ADDR, responder_hops=2),
        "prohibited",
        "host",
        Device(MGR_ADDR, 2, "prem-mgr"),
        "from 198.18.1.30 (prem-mgr, hop 2)",
    ),
    Case(
        "host unreachable from the router: the address said once",
        SSH,
        r22(
            "unreachable",
            responder="198.18.1.1",
            responder_hops=1,
            error="ICMP host unreachable from 198.18.1.1",
        ),
        "unreachable",
        "network",
        Device("198.18.1.1", 1, "prem-rt"),
        "unreachable: ICMP host unreachable from 198.18.1.1 (prem-rt, hop 1)",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_diagnosis(spec: Spec, inv: Inventory, case: Case) -> None:
    seen = observed(case.results, case.listeners, case.peers, case.agents)
    seen = dataclasses.replace(seen, history=case.history)
    ev = evaluate(spec, expected(spec, inv), seen, NOW)
    (row,) = [r for r in ev.rows if r.check.spec.check_id == case.check]
    assert (row.verdict, row.cause) == ("fail", case.cause), row.diagnosis
    assert (row.side, row.device, row.seen_from) == (case.side, case.device, case.seen_from)
    assert case.words in row.diagnosis
    assert row.diagnosis.count(" from 198.18.1.1") <= 1


NAT_CASES = [
    # (name, check, peers, seen_from): the check's result is "open" in SYN mode
    ("plain TCP, SYN mode: the one connection of the host pair was on 443", SSH,
     {"prem-mgr": [PeerSeen(443, NAT_ADDR, NOW - 9)]}, (NAT_ADDR,)),
    ("TLS: the handshake's connection on this port", TLS,
     {"prem-mgr": [PeerSeen(443, NAT_ADDR, NOW - 9)]}, (NAT_ADDR,)),
    ("the capture saw the SYN from another address", SSH,
     {"prem-mgr": [syn(22, NAT_ADDR)]}, (NAT_ADDR,)),
    ("no NAT: the source's own address seen on another port", SSH,
     {"prem-mgr": [PeerSeen(443, PIO_ADDR, NOW - 9), PeerSeen(443, NAT_ADDR, NOW - 9)]}, ()),
    ("no NAT: nothing seen at all", SSH, {}, ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("check", "peers", "seen_from"), [c[1:] for c in NAT_CASES], ids=[c[0] for c in NAT_CASES]
)
def test_nat_in_every_mode(
    spec: Spec,
    inv: Inventory,
    check: str,
    peers: dict[str, list[PeerSeen]],
    seen_from: tuple[str, ...],
) -> None:
    port = int(check.rsplit(":", 1)[1])
    r = result(4, "pio-1", "prem-mgr", port, "open", mode="syn")
    ev = evaluate(spec, expected(spec, inv), observed([r], peers=peers), NOW)
    (row,) = [x for x in ev.rows if x.check.spec.check_id == check]
    assert row.verdict == "pass"
    assert (row.cause, row.seen_from) == ("nat" if seen_from else "ok", seen_from), row.diagnosis
    if seen_from:
        assert f"from {NAT_ADDR}, not {PIO_ADDR} (NAT)" in row.diagnosis


def test_a_destination_without_an_agent_is_not_named_by_nat(spec: Spec, inv: Inventory) -> None:
    r = result(2, "pio-1", "prem-vc", 443, "filtered", mode="syn", last_hop="198.18.1.1")
    ev = evaluate(spec, expected(spec, inv), observed([r]), NOW)
    (row,) = [x for x in ev.rows if x.check.spec.check_id == VC]
    assert (row.side, row.seen_from) == (None, ())
    assert row.device == Device("198.18.1.1", None, "prem-rt", "after")
