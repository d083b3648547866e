"""Adaptive give-up time through a routed path: client -- r1 -- r2 (nftables) -- server.

Dropped and open ports on the same server end in about the floor, not the timeout; a host
with no answering port borrows the round's largest round trip, and only a round where nothing
answers waits the whole timeout; a slow path (netem on r2) gets a window
scaled to its round trip, and its states stay right. All addresses in 198.18.0.0/15, inside
namespaces this test creates and deletes.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import CLIENT, LISTEN_SCRIPT, PYTHON, SERVER, Lab, root_lab_skip_reason, sh

from netcheck.agent.wire import ResultBatch, decode

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(root_lab_skip_reason() is not None, reason=str(root_lab_skip_reason())),
]

LONELY = "198.18.3.3"  # a second server address: every port dropped, its own role
OPEN = (2101, 2102, 2103)
DROPPED = (2201, 2202, 2203)
RULES = f"""table inet nct_adaptive {{
  chain forward_filter {{
    type filter hook forward priority 0;
    ip daddr {SERVER} tcp dport {{ {", ".join(map(str, DROPPED))} }} drop
    ip daddr {LONELY} tcp dport 1-65535 drop
  }}
}}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        sh("ip", "-n", lab.ns["s"], "addr", "add", f"{LONELY}/24", "dev", "v0")
        lab.nft("r2", RULES)
        lab.spawn("s", [PYTHON, "-c", LISTEN_SCRIPT, *map(str, OPEN)])
        time.sleep(0.3)
        yield lab


def _plan(targets: list[tuple[str, str, int]], timeout_s: float, floor_s: float) -> Any:
    checks = [
        {
            "check_id": f"9:c>{role}:{addr}:{port}",
            "interaction": 9,
            "dst_role": role,
            "dst_host": addr,
            "dst_address": addr,
            "port": port,
            "service": "tcp",
        }
        for role, addr, port in targets
    ]
    return {
        "role": "c",
        "host": "c",
        "address": CLIENT,
        "listen": [],
        "checks": checks,
        "timeout_s": timeout_s,
        "min_timeout_s": floor_s,
        "rtt_factor": 10,
    }


def run_plan(lab: Lab, tmp_path: Path, plan: Any, mode: str = "connect") -> tuple[float, Any]:
    """(probe phase in seconds, results by (address, port)) of one `run` in the client."""
    plan_file, out = tmp_path / "plan.json", tmp_path / "out.json"
    plan_file.write_text(json.dumps(plan))
    argv = [PYTHON, "-m", "netcheck.agent", "run", "--plan", str(plan_file), "--out", str(out)]
    proc = lab.run("c", [*argv, "--mode", mode])
    assert proc.returncode == 0, proc.stderr
    batch = decode(ResultBatch, json.loads(out.read_text()))
    span = batch.sent_at - min(r.started_at for r in batch.results)
    return span, {(r.dst_address, r.port): r for r in batch.results}


def mixed(addr: str = SERVER) -> list[tuple[str, str, int]]:
    return [("server", addr, p) for p in OPEN + DROPPED]


@pytest.mark.parametrize("mode", ["connect", "syn"])
def test_dropped_ports_of_an_answering_host_cost_the_floor(
    lab: Lab, tmp_path: Path, mode: str
) -> None:
    span, res = run_plan(lab, tmp_path, _plan(mixed(), timeout_s=2.0, floor_s=0.4), mode)
    assert {p: res[(SERVER, p)].state for p in OPEN + DROPPED} == {
        **{p: "open" for p in OPEN},
        **{p: "filtered" for p in DROPPED},
    }
    assert 0.35 < span < 1.0, span  # about the 0.4 s floor, not the 2 s timeout
    for p in DROPPED:
        r = res[(SERVER, p)]
        assert r.attempts == 3
        assert "within 0.40 s (adaptive: 10 ×" in r.error, r.error
        assert f"round trip to {SERVER}, raised to the 0.4 s floor" in r.error, r.error


@pytest.mark.parametrize("mode", ["connect", "syn"])
def test_a_host_with_no_answering_port_borrows_the_rounds_largest_round_trip(
    lab: Lab, tmp_path: Path, mode: str
) -> None:
    targets = [*mixed(), *(("lonely", LONELY, p) for p in OPEN)]
    span, res = run_plan(lab, tmp_path, _plan(targets, timeout_s=2.0, floor_s=0.4), mode)
    assert 0.35 < span < 1.0, span  # the floor, not the 2 s timeout
    for p in OPEN:
        lonely = res[(LONELY, p)]
        assert lonely.state == "filtered" and lonely.attempts == 3, lonely
        assert lonely.error.startswith(
            "no answer to 3 SYN(s) within 0.40 s (adaptive: 10 × the largest round trip "
            "measured in this round, "
        ), lonely.error
        assert f"to {SERVER}; no sample from this host or role, raised to the 0.4 s floor" in (
            lonely.error
        )
        assert "within 0.40 s" in res[(SERVER, DROPPED[0])].error


def test_a_round_where_nothing_answers_waits_the_whole_timeout(lab: Lab, tmp_path: Path) -> None:
    targets = [("lonely", LONELY, p) for p in OPEN]
    span, res = run_plan(lab, tmp_path, _plan(targets, timeout_s=1.5, floor_s=0.4))
    assert 1.45 < span < 2.2, span
    for p in OPEN:
        lonely = res[(LONELY, p)]
        assert lonely.state == "filtered" and lonely.attempts == 3
        assert lonely.error == (
            "no answer to 3 SYN(s) within 1.50 s (no port answered in this round, "
            "so the full limit of 1.5 s)"
        )


@pytest.mark.skipif(shutil.which("tc") is None, reason="needs tc (iproute2) for netem")
def test_a_slow_path_gets_a_longer_window_and_keeps_its_states(lab: Lab, tmp_path: Path) -> None:
    netem = ["ip", "netns", "exec", lab.ns["r2"], "tc", "qdisc", "add", "dev", "v1", "root"]
    added = sh(*netem, "netem", "delay", "100ms", check=False)
    if added.returncode != 0:
        pytest.skip(f"netem is not available in this kernel: {added.stderr.strip()}")
    try:
        span, res = run_plan(lab, tmp_path, _plan(mixed(), timeout_s=3.0, floor_s=0.4))
    finally:
        sh("ip", "netns", "exec", lab.ns["r2"], "tc", "qdisc", "del", "dev", "v1", "root")
    assert {p: res[(SERVER, p)].state for p in OPEN} == dict.fromkeys(OPEN, "open")
    assert {p: res[(SERVER, p)].state for p in DROPPED} == dict.fromkeys(DROPPED, "filtered")
    latency = max(res[(SERVER, p)].latency_s or 0.0 for p in OPEN)
    assert 0.1 <= latency < 0.3
    # 10 x the ~100 ms round trip: about 1 s, well above the floor and below the timeout.
    assert 0.95 < span < 2.5, span
    text = res[(SERVER, DROPPED[0])].error
    assert "(adaptive: 10 × the 1" in text and "ms round trip to 198.18.3.2; limit 3 s)" in text
