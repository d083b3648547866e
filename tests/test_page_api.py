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
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from check_helpers import result_for

from netcheck.agent.wire import Fact, Registration, ResultBatch, encode
from netcheck.controller.app import make_app
from netcheck.controller.expand import expand
from netcheck.controller.inventory import Inventory, load_inventory
from netcheck.controller.render.page_data import MAX_PAGE
from netcheck.controller.render.page_vms import ROLE_VMS, VMS_SHOWN
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


# What web-01's guest agent reports: RHEL 7.4 booted MBR (the inventory says UEFI), VMware
# tools installed but not running (a warm migration's step 1 blocks).
WEB01_FACTS = (
    Fact("os.name", "RHEL 7.4", "file:/etc/os-release"),
    Fact("boot.matrix", "MBR", "file:/sys/firmware/efi"),
    Fact("vmware_tools.installed", True, "command:rpm"),
    Fact("vmware_tools.running", False, "service:systemd"),
)


async def test_the_page_lists_vm_readiness_and_the_paths_of_an_interaction(
    client: TestClient[web.Request, web.Application],
) -> None:
    """web-01's guest agent reports its facts: the summary lists every VM with its state per
    mode, the step that blocks, its OS and boot mode with their source and the inventory's
    disagreement; a VM with no guest agent says which facts are unknown and why. The
    interconnect's paths (not measured yet) are in interaction 9's details, counted in the
    summary for the gate banner."""
    await _fresh(client)
    reg = encode(Registration("prem_vm", "web-01", "198.18.1.101", "0.1", "connect"))
    assert (await client.post("/api/v1/register", json=reg, headers=AUTH)).status == 200
    batch = encode(ResultBatch(role="prem_vm", host="web-01", facts=WEB01_FACTS))
    assert (await client.post("/api/v1/results", json=batch, headers=AUTH)).status == 200
    for _ in range(100):
        data = await _json(client, "/api/v1/page")
        vms = {v["host"]: v for v in data["vms"]["rows"]}
        if vms["web-01"]["guest_agent"]:
            break
        await asyncio.sleep(0.05)
    b = data["vms"]
    assert b["total"] == 4 and set(vms) == {"web-01", "db-01", "cloud-vm-1", "cloud-vm-2"}
    assert b["modes"] == ["cold_vcd", "cold_vcs", "warm_vcd", "warm_vcs"]
    assert b["rows"][0]["host"] == "web-01"  # the least ready first
    web = vms["web-01"]
    assert web["os"] == {"value": "RHEL 7.4", "source": "guest",
                         "detail": "file:/etc/os-release", "inventory": "RHEL 7.4"}  # fmt: skip
    assert (web["boot"]["value"], web["boot"]["source"], web["boot"]["inventory"]) == (
        "MBR", "guest", "UEFI")  # fmt: skip
    assert web["mismatch"] and any("the inventory says RHEL 7.4 UEFI" in n for n in web["notes"])
    warm = next(m for m in web["modes"] if m["mode"] == "warm_vcd")
    assert warm["state"] == "blocks" and warm["step"]["step"] == 1
    assert "not running" in warm["step"]["text"]
    db = vms["db-01"]
    assert not db["guest_agent"] and db["os"]["source"] == "inventory"
    assert db["os"]["value"] == "Windows Server 2016 (64 bit)"
    assert "vmware_tools.running" in db["unknown_facts"]
    assert any("no guest agent report" in n and "appliance side" in n for n in db["notes"])
    assert {m["state"] for m in db["modes"]} == {"unknown"}
    cloud = vms["cloud-vm-1"]
    assert cloud["os"] == {"value": None, "source": None, "detail": "", "inventory": None}
    # the interconnect: counted in the summary, its figures in the interaction's details
    ic = data["interconnect"]
    assert ic["total"] >= 1 and ic["unknown"] == ic["total"] and ic["required_failing"] == 0
    nine = next(i for i in data["interactions"] if i["id"] == 9)
    assert nine["paths"]["total"] >= 1
    assert next(i for i in data["interactions"] if i["id"] == 4)["paths"] is None
    d = await _json(client, "/api/v1/page/interaction/9")
    p = d["paths"]["rows"][0]
    assert (p["src_host"], p["dst_host"], p["verdict"]) == ("prem-mgr", "cloud-mgr", "unknown")
    assert p["reason"] == "not measured yet" and p["measured"] is None
    r = await _json(client, "/api/v1/page/role/prem_vm")
    assert [v["host"] for v in r["vms"]["rows"]] == ["web-01", "db-01"]
    assert (await _json(client, "/api/v1/page/role/pio"))["vms"] is None
    # The exported page (a file, no controller behind it) reads the inventory as well.
    resp = await client.get("/api/v1/report?format=html", headers=AUTH)
    assert resp.status == 200
    assert "Windows Server 2016 (64 bit)" in await resp.text()


async def test_the_vm_rows_are_bounded_on_a_big_site(
    site: tuple[Spec, Inventory], tmp_path: Path
) -> None:
    """600 VMs: the summary lists the first VMS_SHOWN with the counts (kilobytes gzip'd), the
    VM role's details the first ROLE_VMS; the JSON report keeps every one."""
    spec, _ = site
    doc = yaml.safe_load((REPO / "inventory.example.yaml").read_text())
    doc["hosts"]["prem_vm"] += [
        {"name": f"vm-{n:03d}", "address": f"198.18.{4 + n // 250}.{1 + n % 250}"}
        for n in range(600)
    ]
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc))
    inv = load_inventory(path, spec)
    app = make_app(spec, inv, tmp_path / "nc.sqlite", TOKEN)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        gz = {"Accept-Encoding": "gzip"}
        raw = await c.get("/api/v1/page", headers=gz, auto_decompress=False)
        assert raw.status == 200
        body = await raw.read()
        data = json.loads(gzip.decompress(body))
        b = data["vms"]
        assert b["total"] == 604 and len(b["rows"]) == VMS_SHOWN
        assert b["no_agent"] == 604 and b["states"]["unknown"] == 604
        assert len(json.dumps(b)) < VMS_SHOWN * 2000  # each row a kilobyte or two
        assert len(body) < 24_000, len(body)  # the VM block adds kilobytes, not the site
        role = await c.get("/api/v1/page/role/prem_vm")
        r = await role.json()
        assert r["vms"]["total"] == 602 and len(r["vms"]["rows"]) == ROLE_VMS
        report = await (await c.get("/api/v1/report?format=json")).json()
        assert len(report["vms"]) == 604


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
            # The check's own history (the interaction's, asked for by the first click, may
            # answer after it: the page drops that older answer).
            await pg.locator(
                "#details .timeline h3", has_text="History of 4:pio-1>prem-mgr:8000"
            ).wait_for()
            await pg.wait_for_timeout(300)  # an older answer arriving now must not replace it
            assert "prem-mgr:8000" in await pg.locator("#details .timeline h3").inner_text()
            lanes = pg.locator("#details .timeline .lane .outage.open")
            assert await lanes.count() == 1  # failing since the batch: one open outage
        finally:
            await browser.close()
    paths = {urlsplit(u).path for u in asked}
    assert {"/api/v1/page/interaction/4", "/api/v1/history"} <= paths, paths
    assert "/api/v1/report" not in paths
