"""History in the lab, for real: a port that flaps because a firewall rule comes and goes.

The lab's ``clean`` scenario (namespaces, nftables, controller, agents, stand-ins; nothing
blocked), then twice: an nftables rule on the cloud router drops prem-manager ->
cloud-manager on one port of interaction 9, and is removed again. ``GET /api/v1/history``
must show the check's outages with a start inside each window the rule was in place (the
first probe round after it came) and an end after it went (the first round after it was
removed), the same times as its changes, and the JSON report 4 flaps.

Run under ``flock /tmp/netcheck-netns.lock`` (root: network namespaces and nftables).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from deploy.lab import lab as labmod
from deploy.lab import netns, nftables
from deploy.lab.scenario import Block

REPO = Path(__file__).resolve().parents[1]
STATE = Path("/tmp/netcheck-lab-history")
PREFIX = "nchl-"
PERIOD_S = labmod.LAB_PERIOD_S

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
    with labmod.ready_session("clean", PREFIX, STATE, "netns") as running:
        yield running


def get(lab: labmod.Lab, path: str) -> Any:
    status, body = lab.get(path, 20.0)
    assert status == 200, body[:500]
    return json.loads(body)


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def wait_verdict(lab: labmod.Lab, cid: str, verdict: str, after: float) -> dict[str, Any]:
    """The history once its newest change is to ``verdict`` at or after ``after`` (bounded)."""
    deadline = time.monotonic() + 4 * PERIOD_S + 20
    query = "/api/v1/history?" + urllib.parse.urlencode({"check": cid})
    while True:
        h = get(lab, query)
        last = h["changes"][-1] if h["changes"] else None
        # ISO times have whole seconds: "at or after" within one second.
        if last is not None and last["verdict"] == verdict and ts(last["at"]) >= after - 1:
            return h  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"no {verdict} after {after}: {h}"
        time.sleep(1.0)


def test_a_flapping_port_has_its_outages_and_flaps(lab: labmod.Lab) -> None:
    src = lab.layout.of_role("prem_manager")[0]
    dst = lab.layout.of_role("cloud_manager")[0]
    report = get(lab, "/api/v1/report?format=json")
    check = min(
        (
            c
            for c in report["checks"]
            if c["interaction"] == 9
            and (c["src_host"], c["dst_host"]) == (src.name, dst.name)
            and c["expect"] == "open"
        ),
        key=lambda c: c["port"],
    )
    cid = check["check_id"]
    assert check["verdict"] == "pass", check
    rule = Block("cloud", (src.address,), (dst.address,), (check["port"],), "drop", "test")
    windows: list[tuple[float, float]] = []
    try:
        for _ in range(2):
            added = time.time()
            netns.apply_firewall("cloud", nftables.router_ruleset((rule,), "cloud"), PREFIX)
            failing = wait_verdict(lab, cid, "fail", added)
            assert failing["changes"][-1]["cause"] == "dropped"
            assert failing["outages"][-1]["end"] is None  # the current outage
            removed = time.time()
            netns.apply_firewall("cloud", nftables.router_ruleset((), "cloud"), PREFIX)
            wait_verdict(lab, cid, "pass", removed)
            windows.append((added, removed))
    finally:
        netns.apply_firewall("cloud", nftables.router_ruleset((), "cloud"), PREFIX)
    h = get(lab, "/api/v1/history?" + urllib.parse.urlencode({"check": cid}))
    verdicts = [c["verdict"] for c in h["changes"]]
    assert verdicts == ["pass", "fail", "pass", "fail", "pass"], h
    assert len(h["outages"]) == 2, h
    for (added, removed), outage, fail, back in zip(
        windows, h["outages"], h["changes"][1::2], h["changes"][2::2], strict=True
    ):
        start, end = ts(outage["start"]), ts(outage["end"])
        # The first round after the rule came fails; the first after it went passes.
        assert added - 1 <= start <= removed, (outage, added, removed)
        assert removed - 1 <= end <= removed + 3 * PERIOD_S, (outage, removed)
        assert (outage["start"], outage["end"]) == (fail["at"], back["at"])
    # The gate reads its own writes: after it, the report is of the newest generation.
    assert lab.get("/api/v1/gate?mode=deployment", 20.0)[0] == 200
    row = next(c for c in get(lab, "/api/v1/report?format=json")["checks"] if c["check_id"] == cid)
    assert row["flaps"] == 4, row
    assert row["failing_since"] is None and row["verdict"] == "pass"
    assert row["last_change"] == h["outages"][-1]["end"]
    assert ts(row["first_seen"]) < windows[0][0]
