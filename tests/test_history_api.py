"""GET /api/v1/history on a real controller (aiohttp server on the loopback, real SQLite
file): what agents posted becomes changes and outages, the reports and the gate read it,
reads need the read credential, bad parameters are refused with the reason."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from check_helpers import result_for

from netcheck.agent.wire import ProbeState, Registration, ResultBatch, encode
from netcheck.controller.app import make_app
from netcheck.controller.expand import ExpectedCheck, expected
from netcheck.controller.inventory import Inventory
from netcheck.controller.limits import HISTORY_LIMIT_MAX
from netcheck.controller.spec import Spec

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789"
READ = "read-token-9876543210"
AGENT = {"Authorization": f"Bearer {TOKEN}"}
READER = {"Authorization": f"Bearer {READ}"}
Client = TestClient[web.Request, web.Application]


def pio_checks(spec: Spec, inv: Inventory) -> list[ExpectedCheck]:
    return [c for c in expected(spec, inv).checks if c.src_host == "pio-1"]


async def start(spec: Spec, inv: Inventory, db: Path) -> Client:
    app = make_app(spec, inv, db, TOKEN, read_token=READ)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


async def post_round(
    client: Client, checks: list[ExpectedCheck], t: float, flappy: str, state: ProbeState
) -> None:
    results = []
    for c in checks:
        ok: ProbeState = "open" if c.spec.expect == "open" else "filtered"
        results.append(result_for(c, state if c.spec.check_id == flappy else ok, started_at=t))
    body = encode(ResultBatch("pio", "pio-1", results=tuple(results)))
    r = await client.post("/api/v1/results", json=body, headers=AGENT)
    assert r.status == 200, await r.text()


async def register(client: Client) -> None:
    reg = Registration("pio", "pio-1", "198.18.1.10", "0.1", "connect")
    r = await client.post("/api/v1/register", json=encode(reg), headers=AGENT)
    assert r.status == 200, await r.text()


async def get(client: Client, query: str, status: int = 200) -> Any:
    r = await client.get(f"/api/v1/history?{query}", headers=READER)
    assert r.status == status, await r.text()
    return await r.json()


async def test_changes_and_outages_of_a_flapping_check(
    spec: Spec, inv: Inventory, tmp_path: Path
) -> None:
    checks = pio_checks(spec, inv)
    flappy = next(c for c in checks if c.spec.expect == "open")
    cid = flappy.spec.check_id
    db = tmp_path / "nc.sqlite"
    client = await start(spec, inv, db)
    t0 = time.time() - 100
    try:
        await register(client)
        states: list[ProbeState] = ["open", "filtered", "filtered", "open", "refused", "open"]
        for i, state in enumerate(states):
            await post_round(client, checks, t0 + i * 10, cid, state)
        answer = await get(client, f"check={cid}")
        assert set(answer) == {"changes", "outages"}
        assert [(c["verdict"], c["state"], c["cause"]) for c in answer["changes"]] == [
            ("pass", "open", "ok"),
            ("fail", "filtered", "dropped"),
            ("pass", "open", "ok"),
            ("fail", "refused", "refused"),
            ("pass", "open", "ok"),
        ]
        assert {c["check_id"] for c in answer["changes"]} == {cid}
        iso = [c["at"] for c in answer["changes"]]
        assert iso[1] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 + 10))
        assert answer["outages"] == [
            {"check_id": cid, "start": iso[1], "end": iso[2]},
            {"check_id": cid, "start": iso[3], "end": iso[4]},
        ]
        # The interaction's view holds every check of it; since and limit bound it.
        inter = await get(client, f"interaction={flappy.spec.interaction}")
        mine = {c["check_id"] for c in inter["changes"]}
        siblings = {
            c.spec.check_id for c in checks if c.spec.interaction == flappy.spec.interaction
        }
        assert mine == siblings
        recent = await get(client, f"check={cid}&since={iso[3]}&limit=1")
        assert [c["at"] for c in recent["changes"]] == [iso[4]]
        assert recent["outages"] == [{"check_id": cid, "start": iso[3], "end": iso[4]}]
        by_epoch = await get(client, f"check={cid}&since={t0 + 30}")
        assert [c["at"] for c in by_epoch["changes"]] == iso[2:]
        # The JSON report carries the summary (the gate reads its own writes: after it, the
        # report is of the new generation).
        assert (await client.get("/api/v1/gate?mode=deployment", headers=READER)).status == 200
        r = await client.get("/api/v1/report?format=json", headers=READER)
        row = next(c for c in (await r.json())["checks"] if c["check_id"] == cid)
        assert (row["first_seen"], row["last_change"], row["failing_since"]) == (
            iso[0],
            iso[4],
            None,
        )
        assert row["flaps"] == 4
        # Reads need the read credential, like every other read.
        assert (await client.get(f"/api/v1/history?check={cid}")).status == 401
        assert (await client.get(f"/api/v1/history?check={cid}", headers=AGENT)).status == 401
    finally:
        await client.close()
    # A restart keeps it (and records nothing twice).
    client = await start(spec, inv, db)
    try:
        again = await get(client, f"check={cid}")
        assert again == answer
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("", "exactly one of check"),
        ("check=1:a>b:1&interaction=1", "exactly one of check"),
        ("interaction=abc", "not an interaction id"),
        ("interaction=0", "not an interaction id"),
        ("interaction=99999", "no interaction 99999"),
        ("check=9:nobody>nowhere:1", "no check '9:nobody>nowhere:1'"),
        ("check=" + "x" * 1001, "1 to 1000 characters"),
        ("interaction=2&limit=0", "limit='0'"),
        (f"interaction=2&limit={HISTORY_LIMIT_MAX + 1}", f"from 1 to {HISTORY_LIMIT_MAX}"),
        ("interaction=2&since=yesterday", "neither an ISO 8601 time"),
        ("interaction=2&since=2026-12-01T10:00:00", "no time zone"),
        ("interaction=2&since=-5", "is not a time"),
        ("interaction=2&since=nan", "is not a time"),
        ("interaction=2&interaction=3", "given more than once"),
        ("interaction=2&verdict=fail", "unknown parameter 'verdict'"),
    ],
)
async def test_bad_parameters_are_refused_with_the_reason(
    spec: Spec, inv: Inventory, tmp_path: Path, query: str, words: str
) -> None:
    client = await start(spec, inv, tmp_path / "nc.sqlite")
    try:
        answer = await get(client, query, 400)
        assert words in answer["error"], answer
    finally:
        await client.close()


async def test_the_gate_waits_for_a_flapping_check_to_pass_long_enough(
    spec: Spec, inv: Inventory, tmp_path: Path
) -> None:
    strict = dataclasses.replace(
        spec, policy=spec.policy.model_copy(update={"gate_min_passing_seconds": 300})
    )
    checks = pio_checks(strict, inv)
    flappy = next(c for c in checks if c.spec.expect == "open")
    client = await start(strict, inv, tmp_path / "nc.sqlite")
    now = time.time()
    try:
        await register(client)
        rounds: list[tuple[float, ProbeState]] = [
            (now - 650, "open"),
            (now - 500, "filtered"),
            (now - 350, "open"),
            (now - 200, "filtered"),
            (now - 40, "open"),
        ]
        for t, state in rounds:
            await post_round(client, checks, t, flappy.spec.check_id, state)
        r = await client.get("/api/v1/gate?mode=deployment", headers=READER)
        d = await r.json()
        text = " ".join(d["reasons"])
        assert "passing for 4" in text and "of the required 300 s; flapped 4 times" in text, d
        assert d["decision"] != "go"
    finally:
        await client.close()
