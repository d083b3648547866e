"""End to end: the whole lab qualifies its interconnect (root: namespaces, nftables).

The clean scenario comes up (controller, agents, stand-ins), then the interconnect link
between the two routers is set to MTU 1400. An interconnect request (the operator's command,
against the controller's database) makes the Prem Manager's agent measure interaction 9 on
port 6000 against the Cloud Manager's stand-in: with ICMP fragmentation-needed allowed the
report shows MTU 1400 found by ICMP and the path passes (1400 >= 1280); with the prem router
dropping that ICMP, a black hole of MTU 1400, the path fails and the cold gates say no-go.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.lab import lab as labmod
from deploy.lab import linkshape
from deploy.lab.layout import router_netns
from netcheck.controller.requests import RequestBook

STATE = Path("/tmp/netcheck-lab-e2e-interconnect")
PREFIX = "ncli-"
REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("nft") is None, reason="needs ip and nft"
    ),
]


@pytest.fixture(scope="module")
def lab() -> Iterator[labmod.Lab]:
    with labmod.session("clean", PREFIX, STATE, kind="netns") as running:
        since = time.time()
        assert running.wait_round(since, 6.0, 3 * labmod.LAB_PERIOD_S + 20) == []
        for r in ("prem", "cloud"):
            linkshape.set_mtu(router_netns(r, PREFIX), "ic", 1400)
        yield running


def _request(lab: labmod.Lab, *extra: str) -> str:
    cmd = [sys.executable, "-m", "netcheck.controller", "request", "interconnect",
           "--db", str(lab.db), "--topology", str(lab.topology), "--inventory",
           str(lab.inventory), "--role", "prem_manager", *extra]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.split()[0]


def _wait_done(lab: labmod.Lab, rid: str, limit_s: float) -> None:
    book = RequestBook.open(lab.db)
    try:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            got = book.get(rid)
            assert got is not None
            if got.state in ("done", "failed", "expired"):
                assert got.state == "done", got.detail
                return
            time.sleep(1.0)
    finally:
        book.close()
    raise AssertionError(f"request {rid} not done in {limit_s:g} s")


def _path9(
    lab: labmod.Lab, after: float, limit_s: float = 60.0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the report's path of interaction 9, the report) once measured after `after`."""
    deadline = time.monotonic() + limit_s
    while True:
        status, body = lab.get("/api/v1/report?format=json", 20.0)
        assert status == 200
        rep = json.loads(body)
        (p,) = [p for p in rep["paths"] if p["interaction"] == 9]
        m = p["measured"]
        if m is not None and p["measured_at"] and _epoch(p["measured_at"]) >= after - 1:
            return p, rep
        assert time.monotonic() < deadline, f"no fresh measurement of interaction 9: {p}"
        time.sleep(2.0)


def _epoch(iso: str) -> float:
    return time.mktime(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone


def test_mtu_found_by_icmp_passes(lab: labmod.Lab) -> None:
    t0 = time.time()
    _wait_done(lab, _request(lab), 120)
    p, _ = _path9(lab, t0)
    m = p["measured"]
    assert (m["mtu"], m["route_mtu"], m["icmp"], m["black_hole"]) == (1400, 1500, True, False)
    assert m["loss"] == 0.0 and m["rtt_avg_s"] < 0.03
    assert p["verdict"] == "pass", p["reason"]
    mtu = next(f for f in p["figures"] if f["figure"] == "mtu")
    assert mtu["margin"] == 120 and mtu["ok"] is True


def test_a_black_hole_fails_the_path_and_the_cold_gates(lab: labmod.Lab) -> None:
    prem = router_netns("prem", PREFIX)
    pm = lab.layout.of_role("prem_manager")[0]
    linkshape.block_frag_needed(prem)
    linkshape.flush_pmtu(pm.netns)  # forget the 1400 learnt from the ICMP before
    try:
        t0 = time.time()
        _wait_done(lab, _request(lab, "--throughput"), 180)
        p, _ = _path9(lab, t0)
    finally:
        linkshape.allow_frag_needed(prem)
        # both ends forget what they learnt (the Cloud Manager learnt 1400 from the cloud
        # router's ICMP while it sent the download; it would advertise a 1360-byte MSS)
        linkshape.flush_pmtu(pm.netns)
        linkshape.flush_pmtu(lab.layout.of_role("cloud_manager")[0].netns)
    m = p["measured"]
    assert (m["mtu"], m["icmp"], m["black_hole"]) == (1400, False, True)
    # full-size segments from prem vanish: the upload carries (almost) nothing; the cloud
    # router still sends its ICMP, so the download adapts and flows
    assert m["throughput_streams"] == 11 and m["up_mbit_s"] < 1 and m["down_mbit_s"] > 50
    assert p["verdict"] == "fail" and "black hole" in p["reason"]
    assert "throughput_up" in p["reason"]
    for mode in ("cold_vcd", "warm_vcs"):
        _, body = lab.get(f"/api/v1/gate?mode={mode}", 20.0)
        d = json.loads(body)
        assert d["decision"] == "no-go", d
        assert any(r.startswith("interconnect not qualified: interaction 9") for r in d["reasons"])
    _, body = lab.get("/api/v1/gate?mode=deployment", 20.0)
    assert not any("interconnect" in r for r in json.loads(body)["reasons"])


def test_throughput_both_ways_once_icmp_gets_through(lab: labmod.Lab) -> None:
    t0 = time.time()
    _wait_done(lab, _request(lab, "--throughput"), 180)
    p, _ = _path9(lab, t0)
    m = p["measured"]
    assert (m["mtu"], m["icmp"], m["black_hole"]) == (1400, True, False)
    assert m["throughput_streams"] == 11 and m["up_mbit_s"] > 50 and m["down_mbit_s"] > 50
    up = next(f for f in p["figures"] if f["figure"] == "throughput_up")
    assert up["value"] == m["up_mbit_s"] and up["threshold"] == 1000
    assert up["margin"] == pytest.approx(m["up_mbit_s"] - 1000)
