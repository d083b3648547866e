"""Every probe state through a real routed path: namespaces, two routers, nftables rules.

client -- r1 -- r2 (nftables) -- server, all in 198.18.0.0/15 inside namespaces this test
creates and always deletes. The agent runs through its real CLI inside the client namespace.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import (
    CLIENT,
    LISTEN_SCRIPT,
    PYTHON,
    R2_LEFT,
    SERVER,
    Lab,
    root_lab_skip_reason,
)

from netcheck.agent.wire import ProbeResult, ResultBatch, decode

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(root_lab_skip_reason() is not None, reason=str(root_lab_skip_reason())),
]

TIMEOUT_S = 1.0
DROP, RESET, ADMIN, HOST_UNREACH, HOST_PROHIB, OPEN, CLOSED = range(1001, 1008)
RULES = f"""table inet nct_agent {{
  chain forward_filter {{
    type filter hook forward priority 0;
    tcp dport {DROP} drop
    tcp dport {RESET} reject with tcp reset
    tcp dport {ADMIN} reject with icmp type admin-prohibited
    tcp dport {HOST_UNREACH} reject with icmp type host-unreachable
    tcp dport {HOST_PROHIB} reject with icmp type host-prohibited
  }}
}}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        lab.nft("r2", RULES)
        lab.spawn("s", [PYTHON, "-c", LISTEN_SCRIPT, str(OPEN)])
        time.sleep(0.3)
        yield lab


def run_agent(
    lab: Lab, tmp_path: Path, mode: str, services: dict[int, str] | None = None
) -> dict[int, ProbeResult]:
    """The results of one `run` of the agent on `services` (port: service; default: every
    port of this lab as plain tcp), by port."""
    return {r.port: r for r in run_batch(lab, tmp_path, mode, services).results}


def run_batch(
    lab: Lab, tmp_path: Path, mode: str, services: dict[int, str] | None = None
) -> ResultBatch:
    wanted = services or dict.fromkeys(range(DROP, CLOSED + 1), "tcp")
    checks = [
        {
            "check_id": f"9:c>s:{port}",
            "interaction": 9,
            "dst_role": "s",
            "dst_host": "s",
            "dst_address": SERVER,
            "port": port,
            "service": service,
        }
        for port, service in wanted.items()
    ]
    plan: dict[str, Any] = {"role": "c", "host": "c", "address": CLIENT, "listen": []}
    plan.update(checks=checks, timeout_s=TIMEOUT_S)
    plan_file, out = tmp_path / f"plan-{mode}.json", tmp_path / f"out-{mode}.json"
    plan_file.write_text(json.dumps(plan))
    proc = lab.run(
        "c",
        [
            PYTHON,
            "-m",
            "netcheck.agent",
            "run",
            "--plan",
            str(plan_file),
            "--out",
            str(out),
            "--mode",
            mode,
        ],
    )
    assert proc.returncode == 0, proc.stderr
    return decode(ResultBatch, json.loads(out.read_text()))


EXPECTED = {
    DROP: "filtered",
    RESET: "refused",
    ADMIN: "prohibited",
    HOST_UNREACH: "unreachable",
    HOST_PROHIB: "prohibited",
    OPEN: "open",
    CLOSED: "refused",
}


def test_connect_mode_tells_every_state(lab: Lab, tmp_path: Path) -> None:
    res = run_agent(lab, tmp_path, "connect")
    assert {p: r.state for p, r in res.items()} == EXPECTED
    assert all(r.mode == "connect" for r in res.values())
    assert res[DROP].attempts == 3
    assert res[OPEN].attempts == 1
    # The ICMP error queue names the router that rejected, and the exact ICMP code.
    for port in (ADMIN, HOST_UNREACH, HOST_PROHIB):
        assert res[port].responder == R2_LEFT
    assert "administratively prohibited" in res[ADMIN].error
    assert "host unreachable" in res[HOST_UNREACH].error
    # connect() cannot see a reset's TTL.
    assert all(r.rst_from_firewall is None for r in res.values())
    # The TCP traceroute by connect() with IP_TTL names the hop of a drop and of a reject.
    for port in (DROP, ADMIN, HOST_UNREACH, HOST_PROHIB):
        assert (res[port].last_hop, res[port].last_hop_hops) == (R2_LEFT, 2), res[port]
    assert res[ADMIN].responder_hops == 2
    assert res[OPEN].last_hop is None and res[OPEN].responder_hops is None


def test_syn_mode_tells_every_state_and_finds_the_firewall(lab: Lab, tmp_path: Path) -> None:
    res = run_agent(lab, tmp_path, "syn")
    assert {p: r.state for p, r in res.items()} == EXPECTED
    assert all(r.mode == "syn" for r in res.values())
    assert res[DROP].attempts == 3
    # Traceroute on the port: r2 is the last router that answered before the drop.
    assert res[DROP].last_hop == R2_LEFT
    # r2's reset pretends to come from the server but arrives with one hop too few.
    assert res[RESET].responder == SERVER
    assert "rejected by a firewall" in res[RESET].error
    assert "firewall" not in res[CLOSED].error
    # The same finding, structured: r2's reset vs the server's own (same TTL as its SYN-ACK).
    assert res[RESET].rst_from_firewall is True
    assert res[CLOSED].rst_from_firewall is False
    assert all(res[p].rst_from_firewall is None for p in (DROP, ADMIN, OPEN))
    assert res[CLOSED].last_hop == R2_LEFT
    assert res[ADMIN].responder == R2_LEFT
    assert res[ADMIN].last_hop == R2_LEFT
    assert res[OPEN].last_hop is None and res[OPEN].latency_s is not None
    # Hop numbers: r2 is hop 2; its forged reset came from 2 hops, the server's own from 3.
    assert res[DROP].last_hop_hops == 2 and res[ADMIN].responder_hops == 2
    assert (res[RESET].responder_hops, res[CLOSED].responder_hops) == (2, 3)


@pytest.mark.parametrize("mode", ["connect", "syn"])
def test_a_silent_service_does_not_stretch_the_round_past_its_timeout(
    lab: Lab, tmp_path: Path, mode: str
) -> None:
    """The open port's peer accepts and says nothing; a dropped port keeps the SYN scan busy
    for the whole timeout. The SSH check runs inside the check's own deadline (in SYN mode:
    as soon as the port is found open, while the scan goes on), not after it."""
    batch = run_batch(lab, tmp_path, mode, {DROP: "tcp", OPEN: "ssh"})
    res = {r.port: r for r in batch.results}
    assert (res[DROP].state, res[OPEN].state) == ("filtered", "open")
    sc = res[OPEN].service_check
    assert sc is not None and sc.outcome == "error", sc
    assert sc.detail.endswith("waiting for the SSH banner"), sc.detail
    span = batch.sent_at - min(r.started_at for r in batch.results)
    assert span < TIMEOUT_S + 0.5, span  # generous slack; a timeout on top would be 2 s
