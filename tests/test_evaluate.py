"""evaluate(): one table row per cause, read from both ends of the path."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netcheck.agent.wire import ListenerStatus, PeerSeen, ProbeResult, ServiceCheck, check_id
from netcheck.controller.evaluate import evaluate
from netcheck.controller.expand import expand, expected
from netcheck.controller.inventory import Inventory
from netcheck.controller.model import AgentSeen, Observed
from netcheck.controller.spec import Spec, load_spec

REPO = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0


def result(inter: int, src: str, dst: str, port: int, state: str, **kw: Any) -> ProbeResult:
    addrs = {
        "pio-1": "198.18.1.10",
        "prem-mgr": "198.18.1.30",
        "prem-vc": "198.18.1.20",
        "admin-ws": "198.18.10.10",
    }
    base: dict[str, Any] = {
        "check_id": check_id(inter, src, dst, port),
        "interaction": inter,
        "src_host": src,
        "src_address": addrs[src],
        "dst_host": dst,
        "dst_address": addrs[dst],
        "port": port,
        "state": state,
        "mode": "connect",
        "attempts": 3,
        "started_at": NOW - 10,
        "latency_s": 0.002 if state == "open" else None,
    }
    base.update(kw)
    return ProbeResult(**base)


def agent(role: str, host: str) -> AgentSeen:
    """An agent that reported 5 s ago, every peer it saw until then included."""
    return AgentSeen(role, host, "", "connect", "1", NOW - 5, NOW - 5)


PIO, MGR = agent("pio", "pio-1"), agent("prem_manager", "prem-mgr")


def observed(
    results: list[ProbeResult],
    listeners: dict[str, list[ListenerStatus]] | None = None,
    peers: dict[str, list[PeerSeen]] | None = None,
    agents: list[AgentSeen] | None = None,
) -> Observed:
    """What a store would hold after these reports (lists in, the snapshot's tuples out)."""
    return Observed(
        results=tuple(results),
        listeners={h: tuple(ls) for h, ls in (listeners or {}).items()},
        peers={h: tuple(ps) for h, ps in (peers or {}).items()},
        agents=tuple(agents if agents is not None else [PIO, MGR]),
    )


@dataclass
class Case:
    name: str
    check: str  # check id to look at
    results: list[ProbeResult]
    verdict: str
    cause: str
    words: str  # must appear in the diagnosis
    listeners: dict[str, list[ListenerStatus]] = field(default_factory=dict)
    peers: dict[str, list[PeerSeen]] = field(default_factory=dict)
    agents: list[AgentSeen] = field(default_factory=lambda: [PIO, MGR])


SSH = check_id(4, "pio-1", "prem-mgr", 22)
VC = check_id(2, "pio-1", "prem-vc", 443)
LISTEN22 = {"prem-mgr": [ListenerStatus(22, "listening", NOW - 100)]}

CASES = [
    Case("never tested", SSH, [], "unknown", "not_tested", "has not reported"),
    Case("no agent registered", SSH, [], "unknown", "not_tested", "no agent", agents=[]),
    Case(
        "stale",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "open", started_at=NOW - 1000)],
        "unknown",
        "stale",
        "1000 s old",
    ),
    Case(
        "open with ssh banner",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "open", service_check=ServiceCheck("ssh", "ok"))],
        "pass",
        "ok",
        "SSH banner answered",
    ),
    Case(
        "newest wins",
        SSH,
        [
            result(4, "pio-1", "prem-mgr", 22, "open", started_at=NOW - 5),
            result(4, "pio-1", "prem-mgr", 22, "filtered", started_at=NOW - 50),
        ],
        "pass",
        "ok",
        "open",
    ),
    Case(
        "wrong service",
        SSH,
        [
            result(
                4,
                "pio-1",
                "prem-mgr",
                22,
                "open",
                service_check=ServiceCheck("ssh", "mismatch", "HTTP/1.1 400"),
            )
        ],
        "fail",
        "wrong_service",
        "expected an SSH banner, got HTTP/1.1 400",
    ),
    Case(
        "service check error still passes",
        SSH,
        [
            result(
                4,
                "pio-1",
                "prem-mgr",
                22,
                "open",
                service_check=ServiceCheck("ssh", "error", "timed out"),
            )
        ],
        "pass",
        "ok",
        "check was error: timed out",
    ),
    Case(
        "dropped with last hop",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "filtered", mode="syn", last_hop="198.18.0.1")],
        "fail",
        "dropped",
        "no answer from 198.18.1.30:22 after 3 tries; last hop that answered 198.18.0.1",
    ),
    Case(
        "rejected: destination was listening",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "refused")],
        "fail",
        "rejected",
        "rejected by a firewall: reset while the destination agent was listening on 22",
        listeners=LISTEN22,
    ),
    Case(
        "rejected: reset from another address",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "refused", mode="syn", responder="198.18.0.1")],
        "fail",
        "rejected",
        "the reset came from 198.18.0.1",
    ),
    Case(
        "nothing listening: agent could not hold the port",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "refused")],
        "fail",
        "nothing_listening",
        "could not hold port 22 (denied: EACCES)",
        listeners={"prem-mgr": [ListenerStatus(22, "denied", NOW, error="EACCES")]},
    ),
    Case(
        "nothing listening: reset from the destination itself",
        VC,
        [result(2, "pio-1", "prem-vc", 443, "refused", mode="syn", responder="198.18.1.20")],
        "fail",
        "nothing_listening",
        "sent the reset itself",
    ),
    Case(
        "refused, no agent on the destination",
        VC,
        [result(2, "pio-1", "prem-vc", 443, "refused")],
        "fail",
        "refused",
        "no agent on the destination to tell a firewall from a closed port",
    ),
    Case(
        "listener down: the stand-in had stopped before the probe",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "refused")],
        "unknown",
        "listener_down",
        "the stand-in on prem-mgr:22 was not up when probed at 22:13:10 UTC "
        "(it stopped at 22:13:00 UTC); run the probe again",
        listeners={"prem-mgr": [ListenerStatus(22, "closed", NOW - 20)]},
    ),
    Case(
        "listener down: stopped the moment the probe started",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "refused")],
        "unknown",
        "listener_down",
        "it stopped at 22:13:10 UTC",
        listeners={"prem-mgr": [ListenerStatus(22, "closed", NOW - 10)]},
    ),
    Case(
        "rejected: the stand-in stopped only after the probe",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "refused")],
        "fail",
        "rejected",
        "reset while the destination agent was listening on 22 (until 22:13:15 UTC)",
        listeners={"prem-mgr": [ListenerStatus(22, "closed", NOW - 5)]},
    ),
    Case(
        "listener down: the stand-in started after the probe",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "refused")],
        "unknown",
        "listener_down",
        "(it started at 22:13:11 UTC)",
        listeners={"prem-mgr": [ListenerStatus(22, "listening", NOW - 9)]},
    ),
    Case(
        "rejected: the stand-in started within the tolerance of the probe",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "refused")],
        "fail",
        "rejected",
        "reset while the destination agent was listening on 22",
        listeners={"prem-mgr": [ListenerStatus(22, "listening", NOW - 10 + 0.4)]},
    ),
    Case(
        "an open port says nothing about listener timing",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "open")],
        "pass",
        "ok",
        "open",
        listeners={"prem-mgr": [ListenerStatus(22, "closed", NOW - 20)]},
    ),
    Case(
        "rejected: the reset's TTL says a firewall (no agent on vCenter)",
        VC,
        [result(2, "pio-1", "prem-vc", 443, "refused", mode="syn", rst_from_firewall=True)],
        "fail",
        "rejected",
        "reset forged by a device on the path, in the name of the destination",
    ),
    Case(
        "nothing listening: the reset's TTL says the destination (no agent on vCenter)",
        VC,
        [result(2, "pio-1", "prem-vc", 443, "refused", mode="syn", rst_from_firewall=False)],
        "fail",
        "nothing_listening",
        "the destination itself answered with a reset",
    ),
    Case(
        "unreachable",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "unreachable", responder="198.18.0.1")],
        "fail",
        "unreachable",
        "unreachable: ICMP host unreachable from 198.18.0.1",
    ),
    Case(
        "prohibited",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "prohibited", responder="198.18.0.9")],
        "fail",
        "prohibited",
        "prohibited by a firewall (ICMP administratively prohibited from 198.18.0.9)",
    ),
    Case(
        "probe error",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "error", error="too many open files")],
        "fail",
        "error",
        "too many open files",
    ),
    Case(
        "NAT: destination saw another address",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "open")],
        "pass",
        "nat",
        "arrive from 198.19.77.5, not 198.18.1.10 (NAT)",
        peers={"prem-mgr": [PeerSeen(22, "198.19.77.5", NOW - 9)]},
    ),
    Case(
        "no NAT when the source address was seen too",
        SSH,
        [result(4, "pio-1", "prem-mgr", 22, "open")],
        "pass",
        "ok",
        "open",
        peers={
            "prem-mgr": [PeerSeen(22, "198.19.77.5", NOW - 9), PeerSeen(22, "198.18.1.10", NOW - 9)]
        },
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cause(spec: Spec, inv: Inventory, case: Case) -> None:
    seen = observed(case.results, case.listeners, case.peers, case.agents)
    ev = evaluate(spec, expected(spec, inv), seen, NOW)
    (row,) = [r for r in ev.rows if r.check.spec.check_id == case.check]
    assert (row.verdict, row.cause) == (case.verdict, case.cause), row.diagnosis
    assert case.words in row.diagnosis


def closed_spec(tmp_path: Path) -> Spec:
    text = (REPO / "topology.yaml").read_text()
    text = text.replace(
        "\n# Migration modes",
        "\n  - id: 101\n    title: Guests must not reach the Cloud Manager\n"
        "    source: pio\n    destination: prem_manager\n    flows:\n"
        '      - ports: "23"\n        expect: closed\n\n# Migration modes',
        1,
    )
    (tmp_path / "topology.yaml").write_text(text)
    (tmp_path / "guest_os_matrix.yaml").write_text((REPO / "guest_os_matrix.yaml").read_text())
    return load_spec(tmp_path / "topology.yaml")


@pytest.mark.parametrize(
    ("state", "verdict", "cause"),
    [("open", "fail", "unexpected_open"), ("refused", "pass", "ok"), ("filtered", "pass", "ok")],
)
def test_expect_closed(
    tmp_path: Path, inv: Inventory, state: str, verdict: str, cause: str
) -> None:
    spec = closed_spec(tmp_path)
    r = result(101, "pio-1", "prem-mgr", 23, state)
    peers = {"prem-mgr": [PeerSeen(23, "198.19.77.5", NOW - 9)]}
    ev = evaluate(spec, expected(spec, inv), observed([r], peers=peers), NOW)
    (row,) = [x for x in ev.rows if x.check.spec.check_id == r.check_id]
    assert (row.verdict, row.cause) == (verdict, cause)


def test_rows_rollups_and_unexpected(spec: Spec, inv: Inventory) -> None:
    stray = result(4, "pio-1", "prem-mgr", 23, "open")  # port 23 is in no flow
    ok = result(4, "pio-1", "prem-mgr", 22, "open")
    bad = result(4, "pio-1", "prem-mgr", 443, "filtered")
    ev = evaluate(spec, expected(spec, inv), observed([stray, ok, bad], agents=[PIO]), NOW)
    assert len(ev.rows) == len(expand(spec, inv))
    assert ev.unexpected == (stray,)
    four = next(r for r in ev.by_interaction if r.key == "4")
    assert (four.passed, four.failed) == (1, 1)
    assert four.unknown == four.total - 2
    assert four.verdict == "fail"
    pair = next(r for r in ev.by_role_pair if r.key == "pio>prem_manager")
    assert (pair.passed, pair.failed) == (1, 1)
    assert sum(r.total for r in ev.by_interaction) == len(ev.rows)
    assert sum(r.total for r in ev.by_role_pair) == len(ev.rows)
