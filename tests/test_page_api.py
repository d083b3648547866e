"""The page's endpoints on a real controller (real aiohttp server, real SQLite file): the page
embeds a summary of kilobytes, not the whole report; details, pages of failing rows; bounds
and refusals."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from check_helpers import result_for

from netcheck.agent.wire import Registration, ResultBatch, encode
from netcheck.controller.app import make_app
from netcheck.controller.expand import expand
from netcheck.controller.inventory import Inventory, load_inventory
from netcheck.controller.render.page_data import MAX_PAGE
from netcheck.controller.spec import Spec, load_spec

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DROPPED = range(8000, 8011)  # interaction 4's tls range, pio-1 -> prem-mgr


@pytest.fixture(scope="module")
def site() -> tuple[Spec, Inventory]:
    spec = load_spec(REPO / "topology.yaml")
    return spec, load_inventory(REPO / "inventory.example.yaml", spec)


@pytest.fixture
async def client(
    site: tuple[Spec, Inventory], tmp_path: Path
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    spec, inv = site
    c = TestClient(TestServer(make_app(spec, inv, tmp_path / "nc.sqlite", TOKEN), host="127.0.0.1"))
    await c.start_server()
    reg = encode(Registration("pio", "pio-1", "198.18.1.10", "0.1", "connect"))
    assert (await c.post("/api/v1/register", json=reg, headers=AUTH)).status == 200
    results = [
        result_for(
            ch,
            "filtered" if ch.spec.interaction == 4 and ch.spec.port in DROPPED else "open",
            started_at=time.time() - 1,
        )
        for ch in expand(spec, inv)
        if ch.src_host == "pio-1"
    ]
    body = encode(ResultBatch(role="pio", host="pio-1", results=tuple(results)))
    assert (await c.post("/api/v1/results", json=body, headers=AUTH)).status == 200
    yield c
    await c.close()


async def _json(client: TestClient[web.Request, web.Application], url: str) -> Any:
    r = await client.get(url)
    assert r.status == 200, (url, await r.text())
    return await r.json()


async def _fresh(client: TestClient[web.Request, web.Application]) -> dict[str, Any]:
    """The page's data once it has seen the batch (readers may get the previous one)."""
    for _ in range(100):
        data: dict[str, Any] = await _json(client, "/api/v1/page")
        if data["failures"]["failed"]:
            return data
        await asyncio.sleep(0.05)
    raise AssertionError("the page never showed the batch")


async def test_the_page_carries_a_summary_not_the_report(
    client: TestClient[web.Request, web.Application],
) -> None:
    data = await _fresh(client)
    f = data["failures"]
    # the eleven dropped ports of one host pair: one row, and the unknown ones after it
    first = f["rows"][0]
    assert (first["ports"], first["count"], first["cause"]) == ("8000-8010", 11, "dropped")
    assert (first["src_address"], first["dst_address"]) == ("198.18.1.10", "198.18.1.30")
    assert "198.18.1.30:8000-8010" in first["diagnosis"]
    assert (
        f["failed"] == 11 and f["checks"] == data["summary"]["failed"] + data["summary"]["unknown"]
    )
    assert "checks" not in data and "listeners" not in data  # not the report's lists
    assert {i["id"] for i in data["interactions"]} == set(range(1, 16))
    assert data["never_registered"]  # the example's other agents never registered
    assert data["config"]["error"] is None
    page = await client.get("/")
    html = await page.text()
    report = await client.get("/api/v1/report?format=json")
    assert len(html) < len(await report.text())
    assert 'id="page-data"' in html and '"checks":[' not in html
    # gzip'd once per generation, when the client takes it
    gz = {"Accept-Encoding": "gzip"}
    raw = await client.get("/api/v1/page", headers=gz, auto_decompress=False)
    assert raw.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(await raw.read()))["site"] == data["site"]


async def test_details_and_pages(client: TestClient[web.Request, web.Application]) -> None:
    await _fresh(client)
    d = await _json(client, "/api/v1/page/interaction/4")
    tls = next(f for f in d["flows"] if f["ports"] == "8000-8010")
    assert (tls["checks"], tls["passed"], tls["runs"]) == (11, 0, 1)
    assert tls["rows"][0]["count"] == 11
    docker = next(f for f in d["flows"] if f["ports"] == "2376")
    assert docker["passed"] == 1 and docker["rows"][0]["verdict"] == "pass"
    r = await _json(client, "/api/v1/page/role/pio")
    assert r["hosts_total"] == len(r["hosts"]) >= 1
    assert r["failing"][0]["ports"] == "8000-8010"
    p = await _json(client, "/api/v1/page/failures?offset=1&limit=2")
    assert (p["offset"], p["limit"], len(p["rows"])) == (1, 2, 2)
    whole = await _json(client, "/api/v1/page/failures?offset=0&limit=99999")
    assert whole["limit"] == MAX_PAGE and len(whole["rows"]) == whole["total"]
    assert whole["rows"][1:3] == p["rows"]


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/api/v1/page/interaction/99", 404),
        ("/api/v1/page/interaction/x", 404),
        ("/api/v1/page/role/nobody", 404),
        ("/api/v1/page/failures?offset=-1", 400),
        ("/api/v1/page/failures?limit=ten", 400),
        ("/api/v1/page/failures?offset=99999999999", 400),
    ],
)
async def test_bad_requests_say_why(
    client: TestClient[web.Request, web.Application], url: str, status: int
) -> None:
    r = await client.get(url)
    assert r.status == status
    assert (await r.json())["error"]


@pytest.mark.browser
@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"needs Chromium at {CHROMIUM}")
async def test_the_live_page_on_the_controller(
    client: TestClient[web.Request, web.Application],
) -> None:
    """The page as the controller serves it, in real Chromium: its script polls /api/v1/page,
    a click fetches the interaction's details, a click on a failing row its history."""
    from playwright.async_api import async_playwright

    await _fresh(client)
    asked: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pg = await browser.new_page(viewport={"width": 1280, "height": 900})
            pg.on("request", lambda r: asked.append(r.url))
            await pg.goto(str(client.make_url("/")))
            row = pg.locator('#failures tr[data-check="4:pio-1>prem-mgr:8000"]')
            assert "8000-8010" in await row.inner_text()
            await pg.locator('.edge-label[data-interaction="4"]').click()
            port = pg.locator('#details .port[data-ports="8000-8010"] .pair.verdict-fail')
            await port.wait_for()
            assert "11 ports" in await port.inner_text()
            await row.click()
            await pg.locator("#details .timeline").wait_for()
            lanes = pg.locator("#details .timeline .lane .outage.open")
            assert await lanes.count() == 1  # failing since the batch: one open outage
        finally:
            await browser.close()
    paths = {urlsplit(u).path for u in asked}
    assert {"/api/v1/page/interaction/4", "/api/v1/history"} <= paths, paths
    assert "/api/v1/report" not in paths
