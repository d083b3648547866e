"""The topology page in real headless Chromium, served by a real aiohttp server on 127.0.0.1:
what a person sees when a check fails, when it is fixed, and when they click an edge."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from render_helpers import gates_for, load, make_evaluation

from netcheck.agent.wire import check_id
from netcheck.controller.inventory import Inventory
from netcheck.controller.model import Evaluation
from netcheck.controller.render import render_page, render_report
from netcheck.controller.spec import Spec

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCKER = check_id(4, "pio-1", "prem-mgr", 2376)
RED, GREEN = "rgb(207, 34, 46)", "rgb(26, 127, 55)"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"needs Chromium at {CHROMIUM}"),
]


@dataclass
class Site:
    spec: Spec
    inv: Inventory
    ev: Evaluation
    report_fetches: int = 0


SITE: web.AppKey[Site] = web.AppKey("site", Site)


async def page(request: web.Request) -> web.Response:
    s = request.app[SITE]
    html = render_page(s.spec, s.ev, gates_for(s.spec, s.inv, s.ev), refresh_seconds=1)
    return web.Response(text=html, content_type="text/html")


async def report(request: web.Request) -> web.Response:
    s = request.app[SITE]
    s.report_fetches += 1
    fmt = request.query.get("format", "json")
    body = render_report(s.spec, s.ev, gates_for(s.spec, s.inv, s.ev), fmt)
    return web.Response(text=body, content_type="application/json")


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Site]]:
    spec, inv = load()
    site = Site(spec, inv, make_evaluation(spec, inv, states={DOCKER: "refused"}))
    app = web.Application()
    app[SITE] = site
    app.router.add_get("/", page)
    app.router.add_get("/api/v1/report", report)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/", site
    finally:
        await runner.cleanup()


async def test_a_person_sees_the_failure_the_fix_and_the_diagnosis(
    served: tuple[str, Site],
) -> None:
    from playwright.async_api import async_playwright

    url, site = served
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pg = await browser.new_page(viewport={"width": 1680, "height": 1050})
            await pg.goto(url)
            edge4 = pg.locator('.edges .edge[data-interaction="4"]')
            line4 = edge4.locator(".line")
            stroke = "el => getComputedStyle(el).stroke"
            # the failing interaction is drawn red, a passing one green
            assert "verdict-fail" in (await edge4.get_attribute("class") or "")
            assert await line4.evaluate(stroke) == RED
            line5 = pg.locator('.edges .edge[data-interaction="5"] .line')
            assert await line5.evaluate(stroke) == GREEN
            label4 = pg.locator('.edge-label[data-interaction="4"] text')
            assert await label4.text_content() == "4: 14/15"
            # the banner says no-go for the modes that need interaction 4
            banner = pg.locator("#gate-banner")
            deploy = banner.locator('.gate[data-mode="deployment"]')
            assert "NO-GO" in await deploy.inner_text()
            assert "1 blocking" in await deploy.inner_text()
            # a click on the edge shows its failing port and the diagnosis
            await pg.locator('.edge-label[data-interaction="4"]').click()
            details = pg.locator("#details")
            text = await details.inner_text()
            assert "Interaction 4: HDM PIO Appliance to HDM Prem Manager" in text
            failing = details.locator(f'.pair.verdict-fail[data-check="{DOCKER}"]')
            assert "pio-1 → prem-mgr:2376" in await failing.inner_text()
            diagnosis = next(r.diagnosis for r in site.ev.rows if r.check.spec.check_id == DOCKER)
            assert diagnosis in await failing.inner_text()
            await pg.screenshot(path="/tmp/netcheck-page.png")
            # clicking the line itself (away from its label) selects too
            box = await pg.locator('.edges .edge[data-interaction="8"] .line').bounding_box()
            assert box is not None
            await pg.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2)
            assert "Interaction 8:" in await details.inner_text()
            await pg.locator('.edge-label[data-interaction="4"]').click()
            # the data changes: the port is opened; the page refreshes itself
            fetches = site.report_fetches
            site.ev = make_evaluation(site.spec, site.inv)
            await pg.wait_for_function(
                "document.querySelector('.edges .edge[data-interaction=\"4\"]')"
                ".classList.contains('verdict-pass')",
                timeout=8000,
            )
            assert site.report_fetches > fetches
            assert await line4.evaluate(stroke) == GREEN
            assert await label4.text_content() == "4: 15/15"
            assert (await deploy.locator(".gate-decision").inner_text()).strip() == "GO"
            # the selection survived the refresh, and shows the port passing now
            assert "selected" in (await edge4.get_attribute("class") or "")
            assert await details.locator(".pair.verdict-fail").count() == 0
            assert "pio-1 → prem-mgr:2376" in await details.inner_text()
            assert await pg.locator("#failures tbody tr.empty").count() == 1
        finally:
            await browser.close()


async def test_without_javascript_the_failures_are_still_there(served: tuple[str, Site]) -> None:
    from playwright.async_api import async_playwright

    url, site = served
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            ctx = await browser.new_context(java_script_enabled=False)
            pg = await ctx.new_page()
            await pg.goto(url)
            rows = pg.locator("#failures tbody tr")
            assert await rows.count() == 1
            assert "pio-1 -> prem-mgr:2376 (docker)" in await rows.first.inner_text()
            line4 = pg.locator('.edges .edge[data-interaction="4"] .line')
            assert await line4.evaluate("el => getComputedStyle(el).stroke") == RED
            assert site.report_fetches == 0
            data = json.loads(await pg.locator("#report-data").text_content() or "")
            assert data["summary"]["failed"] == 1
        finally:
            await browser.close()
