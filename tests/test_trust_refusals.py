"""Unauthenticated traffic is cheap: 5,000 bad requests write nothing and log little."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from netcheck.agent.wire import Registration, encode
from netcheck.controller.app import make_app
from netcheck.controller.appkeys import REFUSALS, STORE
from netcheck.controller.inventory import load_inventory
from netcheck.controller.refusals import Denied, Refusals
from netcheck.controller.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
TOKEN = "agent-token-0123456789"


def counters(db: Path) -> tuple[int, float]:
    with closing(sqlite3.connect(db)) as c:
        (n,) = c.execute("SELECT count(*) FROM counters").fetchone()
        (v,) = c.execute("SELECT coalesce(sum(value), 0) FROM counters").fetchone()
    return int(n), float(v)


async def test_5000_bad_requests_write_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = load_spec(REPO / "topology.yaml")
    inv = load_inventory(REPO / "inventory.example.yaml", spec)
    db = tmp_path / "nc.sqlite"
    app = make_app(spec, inv, db, TOKEN, read_token="read-token-0123456789")
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        version, before = app[STORE].version, counters(db)
        body = encode(Registration("pio", "pio-1", "198.18.1.10", "0.1", "connect"))
        caplog.set_level(logging.INFO, logger="netcheck.controller")
        statuses: dict[int, int] = {}
        retry_after: set[str] = set()

        async def one(i: int) -> None:
            if i % 2:
                r = await client.post(
                    "/api/v1/register", json=body, headers={"Authorization": "Bearer bad"}
                )
            else:
                r = await client.get("/api/v1/report")
            statuses[r.status] = statuses.get(r.status, 0) + 1
            if r.status == 429:
                retry_after.add(r.headers["Retry-After"])
            await r.release()

        for start in range(0, 5000, 250):
            await asyncio.gather(*(one(i) for i in range(start, start + 250)))
        assert sum(statuses.values()) == 5000
        assert set(statuses) == {401, 429}
        assert statuses[429] > 4900  # past the first 20 refusals of the source
        assert retry_after and all(int(v) >= 1 for v in retry_after)
        assert app[STORE].version == version  # no commit at all
        assert counters(db) == before
        refused_lines = [r for r in caplog.records if r.getMessage().startswith("refused ")]
        assert 1 <= len(refused_lines) <= 3
        counts, _ = app[REFUSALS].snapshot()
        assert sum(counts.values()) == 5000 and counts["rate"] > 4900
        metrics = await client.get(
            "/metrics", headers={"Authorization": "Bearer read-token-0123456789"}
        )
        assert metrics.status == 429  # the source is still past its limit
        assert (await client.get("/healthz")).status == 200  # health stays open
    finally:
        await client.close()


def test_the_bucket_refills_and_logs_once_per_window() -> None:
    now = [0.0]
    r = Refusals(lambda: now[0], burst=4, window_s=2.0, log_every_s=10.0)
    denied = Denied(401, "auth", "no")
    answers = [r.refuse("a", denied, "GET /").status for _ in range(5)]
    assert answers == [401, 401, 401, 429, 429]
    assert r.limited("a") is not None and r.limited("b") is None
    now[0] = 0.5  # one token back (2 per second)
    assert r.limited("a") is None
    assert r.logged == 1
    now[0] = 11.0
    r.refuse("a", denied, "GET /")
    assert r.logged == 2
    assert r.snapshot()[0]["auth"] == 6
