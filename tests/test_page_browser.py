"""The topology page in real headless Chromium, served by a real aiohttp server on 127.0.0.1:
what a person sees when a check fails, when it is fixed, and when they click an edge; the
page at 1,024, 1,280 and 1,600 px (text at least 11 px, nothing overlapping); merged port
ranges; the reload-error and never-registered banners; a check's history as a timeline.

The server answers the page's endpoints with the same pure functions the controller's routes
call (render.page, render.page_data); tests/test_page_api.py reads those routes themselves.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from check_helpers import result_for
from guest_helpers import guest_facts
from guest_trees import guests
from render_helpers import NOW, gates_for, load, make_evaluation

from netcheck.agent.guest.facts import collect
from netcheck.agent.guest.facts.base import Root
from netcheck.agent.wire import PathMeasurement, ProbeState, check_id
from netcheck.controller.evaluate import evaluate
from netcheck.controller.expand import expected
from netcheck.controller.inventory import Inventory
from netcheck.controller.model import Evaluation, Observed
from netcheck.controller.render import render_page
from netcheck.controller.render.page_data import (
    failure_runs,
    failures_page,
    interaction_details,
    page_summary,
    role_details,
)
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
WIDTHS = (1024, 1280, 1600)
SHOTS = Path("/tmp")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"needs Chromium at {CHROMIUM}"),
]


@dataclass
class Site:
    spec: Spec
    inv: Inventory
    ev: Evaluation
    extra: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] | None = None  # None: the endpoint answers 404
    counts: int | None = None  # every interaction's counts in /api/v1/page, as a big site's
    summary_fetches: int = 0
    history_asked: list[str] = field(default_factory=list)


SITE: web.AppKey[Site] = web.AppKey("site", Site)


def _json(doc: Any) -> web.Response:
    if doc is None:
        return web.json_response({"error": "not found"}, status=404)
    return web.json_response(doc)


async def page(request: web.Request) -> web.Response:
    s = request.app[SITE]
    gates = gates_for(s.spec, s.inv, s.ev)
    html = render_page(s.spec, s.ev, gates, refresh_seconds=1, extra=s.extra, inventory=s.inv)
    return web.Response(text=html, content_type="text/html")


async def summary(request: web.Request) -> web.Response:
    s = request.app[SITE]
    s.summary_fetches += 1
    gates = gates_for(s.spec, s.inv, s.ev)
    doc = page_summary(s.spec, s.ev, gates, failure_runs(s.ev), s.extra, s.inv)
    if s.counts is not None:
        for i in doc["interactions"]:
            i.update(passed=s.counts - 1, total=s.counts, failed=1, verdict="fail")
    return _json(doc)


async def interaction(request: web.Request) -> web.Response:
    s = request.app[SITE]
    return _json(interaction_details(s.spec, s.ev, int(request.match_info["id"])))


async def role(request: web.Request) -> web.Response:
    s = request.app[SITE]
    return _json(role_details(s.spec, s.ev, request.match_info["role"], s.inv))


async def failures(request: web.Request) -> web.Response:
    s = request.app[SITE]
    q = request.query
    return _json(failures_page(failure_runs(s.ev), int(q["offset"]), int(q["limit"])))


async def history(request: web.Request) -> web.Response:
    s = request.app[SITE]
    s.history_asked.append(request.query_string)
    return _json(s.history)


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Site]]:
    spec, inv = load()
    site = Site(spec, inv, make_evaluation(spec, inv, states={DOCKER: "refused"}))
    app = web.Application()
    app[SITE] = site
    app.router.add_get("/", page)
    app.router.add_get("/api/v1/page", summary)
    app.router.add_get("/api/v1/page/interaction/{id}", interaction)
    app.router.add_get("/api/v1/page/role/{role}", role)
    app.router.add_get("/api/v1/page/failures", failures)
    app.router.add_get("/api/v1/history", history)
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
            await details.locator("h2").filter(has_text="Interaction 4").wait_for()
            text = await details.inner_text()
            assert "Interaction 4: HDM PIO Appliance to HDM Prem Manager" in text
            failing = details.locator(f'.pair.verdict-fail[data-check="{DOCKER}"]')
            assert "pio-1 → prem-mgr:2376" in await failing.inner_text()
            diagnosis = next(r.diagnosis for r in site.ev.rows if r.check.spec.check_id == DOCKER)
            assert diagnosis in await failing.inner_text()
            assert "198.18.1.10 → 198.18.1.30" in await failing.inner_text()
            await pg.screenshot(path=str(SHOTS / "netcheck-page.png"))
            # clicking the line itself (away from its label) selects too
            box = await pg.locator('.edges .edge[data-interaction="8"] .line').bounding_box()
            assert box is not None
            await pg.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2)
            await details.locator("h2").filter(has_text="Interaction 8:").wait_for()
            await pg.locator('.edge-label[data-interaction="4"]').click()
            await details.locator("h2").filter(has_text="Interaction 4").wait_for()
            # the data changes: the port is opened; the page refreshes itself
            fetches = site.summary_fetches
            site.ev = make_evaluation(site.spec, site.inv)
            await pg.wait_for_function(
                "document.querySelector('.edges .edge[data-interaction=\"4\"]')"
                ".classList.contains('verdict-pass')",
                timeout=8000,
            )
            assert site.summary_fetches > fetches
            assert await line4.evaluate(stroke) == GREEN
            assert await label4.text_content() == "4: 15/15"
            assert (await deploy.locator(".gate-decision").inner_text()).strip() == "GO"
            # the selection survived the refresh, and shows the port passing now
            assert "selected" in (await edge4.get_attribute("class") or "")
            await pg.wait_for_function(
                "!document.querySelector('#details .pair.verdict-fail')", timeout=8000
            )
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
            text = await rows.first.inner_text()
            for part in ("pio-1", "198.18.1.10", "prem-mgr", "198.18.1.30", "2376", "rejected"):
                assert part in text
            line4 = pg.locator('.edges .edge[data-interaction="4"] .line')
            assert await line4.evaluate("el => getComputedStyle(el).stroke") == RED
            assert site.summary_fetches == 0
            data = json.loads(await pg.locator("#page-data").text_content() or "")
            assert data["summary"]["failed"] == 1
            assert data["failures"]["total"] == 1
        finally:
            await browser.close()


# Every piece of the picture: each SVG text with its rendered font size and box, the role
# boxes (and the texts inside each), the edge labels' pills; and the page's own text.
MEASURE = """() => {
  const box = (n) => { const r = n.getBoundingClientRect();
    return [r.left, r.top, r.width, r.height]; };
  const svg = document.getElementById("topology");
  const texts = [...svg.querySelectorAll("text")].map((t) => ({
    text: t.textContent, px: parseFloat(getComputedStyle(t).fontSize) * t.getScreenCTM().a,
    box: box(t), role: t.closest(".role") ? t.closest(".role").dataset.role : null,
    label: !!t.closest(".edge-label") }));
  const roles = [...svg.querySelectorAll(".role")].map((g) => ({
    role: g.dataset.role, box: box(g.querySelector("rect")) }));
  const labels = [...svg.querySelectorAll(".edge-label")].map((g) => ({
    id: g.dataset.interaction, box: box(g.querySelector("rect")) }));
  const html = [...document.querySelectorAll("body *")]
    .filter((n) => !n.closest("svg") && n.offsetParent !== null
      && [...n.childNodes].some((c) => c.nodeType === 3 && c.textContent.trim()))
    .map((n) => ({ text: n.textContent.trim().slice(0, 40),
                   px: parseFloat(getComputedStyle(n).fontSize) }));
  return { texts, roles, labels, html, scrollWidth: document.documentElement.scrollWidth,
           innerWidth: window.innerWidth };
}"""


def _overlap(a: list[float], b: list[float], margin: float = 0.0) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return (
        ax < bx + bw - margin
        and bx < ax + aw - margin
        and ay < by + bh - margin
        and by < ay + ah - margin
    )


def _inside(inner: list[float], outer: list[float], slack: float = 0.5) -> bool:
    ix, iy, iw, ih = inner
    ox, oy, ow, oh = outer
    return (
        ix >= ox - slack
        and iy >= oy - slack
        and ix + iw <= ox + ow + slack
        and iy + ih <= oy + oh + slack
    )


def _assert_readable(m: dict[str, Any], width: int) -> None:
    assert m["scrollWidth"] <= m["innerWidth"], f"{width} px: the page scrolls sideways"
    small = [(t["text"], round(t["px"], 1)) for t in m["texts"] if t["px"] < 11]
    assert not small, f"{width} px: picture text under 11 px: {small}"
    small = [(t["text"], t["px"]) for t in m["html"] if t["px"] < 11]
    assert not small, f"{width} px: page text under 11 px: {small}"
    roles, labels, texts = m["roles"], m["labels"], m["texts"]
    for i, a in enumerate(roles):
        for b in roles[i + 1 :]:
            assert not _overlap(a["box"], b["box"]), (width, a["role"], b["role"])
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            assert not _overlap(a["box"], b["box"]), (width, "labels", a["id"], b["id"])
        for r in roles:
            assert not _overlap(a["box"], r["box"]), (width, "label", a["id"], r["role"])
    by_role = {r["role"]: r["box"] for r in roles}
    for t in texts:
        if t["role"] is not None:
            assert _inside(t["box"], by_role[t["role"]]), (width, t["text"], "out of its box")
        elif t["label"]:
            assert any(_inside(t["box"], lb["box"]) for lb in labels), (width, t["text"])
    for i, a in enumerate(texts):
        for b in texts[i + 1 :]:
            # glyph boxes of adjacent lines touch by a pixel or two: 1.5 px of slack
            assert not _overlap(a["box"], b["box"], 1.5), (width, a["text"], b["text"])


async def test_the_page_reads_at_every_width(served: tuple[str, Site]) -> None:
    """At 1,024, 1,280 and 1,600 px: every text of the picture at 11 px or more, no text
    outside its box, no two boxes, labels or texts overlapping, no sideways scrolling; with
    a big site's labels (thousands of checks per interaction) and the details open."""
    from playwright.async_api import async_playwright

    url, site = served
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for width in WIDTHS:
                site.counts = None
                pg = await browser.new_page(viewport={"width": width, "height": 900})
                await pg.goto(url)
                await pg.locator('.edge-label[data-interaction="4"]').click()
                await pg.locator("#details h2").filter(has_text="Interaction 4").wait_for()
                m = await pg.evaluate(MEASURE)
                assert len(m["roles"]) == 12 and len(m["labels"]) == 15
                _assert_readable(m, width)
                # the widest labels a big site draws: "12: 9998/9999", once the page refreshed
                site.counts = 9999
                label = pg.locator('.edge-label[data-interaction="12"] text')
                await pg.wait_for_function(
                    "document.querySelector('.edge-label[data-interaction=\"12\"] text')"
                    ".textContent === '12: 9998/9999'",
                    timeout=8000,
                )
                assert await label.text_content() == "12: 9998/9999"
                _assert_readable(await pg.evaluate(MEASURE), width)
                await pg.screenshot(path=str(SHOTS / f"netcheck-page-{width}.png"), full_page=True)
                await pg.close()
        finally:
            await browser.close()


def _with_states(site: Site, states: dict[str, ProbeState], **fields: Any) -> Evaluation:
    """The site's evaluation with these checks in these states (and result fields)."""
    ev = make_evaluation(site.spec, site.inv, states=states)
    exp = expected(site.spec, site.inv)
    by_id = {c.spec.check_id: c for c in exp.checks}
    results = [
        result_for(by_id[r.check.spec.check_id], states[r.check.spec.check_id],
                   started_at=NOW - 30, **fields)
        if r.check.spec.check_id in states
        else r.result
        for r in ev.rows
    ]  # fmt: skip
    seen = Observed(
        results=tuple(x for x in results if x is not None),
        listeners=ev.listeners,
        agents=ev.agents,
    )
    return evaluate(site.spec, exp, seen, NOW)


async def test_a_blocked_range_is_one_row_with_addresses_and_the_hop(
    served: tuple[str, Site],
) -> None:
    """Interaction 8's 5000-5010 dropped past a router: one row in the details and one in
    the table (not eleven), with both addresses and the hop where the packets died."""
    from playwright.async_api import async_playwright

    url, site = served
    ids = [c for c in (check_id(8, "prem-esxi-mgr", "prem-mgr", p) for p in range(5000, 5011))]
    by_id = {r.check.spec.check_id for r in site.ev.rows}
    ids = [i for i in ids if i in by_id]
    assert len(ids) == 11, sorted(x for x in by_id if x.startswith("8:"))[:5]
    site.ev = _with_states(
        site, dict.fromkeys(ids, "filtered"), last_hop="198.18.2.1", last_hop_hops=2
    )
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pg = await browser.new_page(viewport={"width": 1280, "height": 900})
            await pg.goto(url)
            rows = pg.locator("#failures tbody tr")
            assert await rows.count() == 1
            text = await rows.first.inner_text()
            assert "5000-5010" in text and "(11)" in text
            assert "198.18.2.1" in text  # the enforcing hop
            for part in ("prem-esxi-mgr", "198.18.1.40", "prem-mgr"):
                assert part in text
            await pg.locator('.edge-label[data-interaction="8"]').click()
            port = pg.locator('#details .port[data-ports="5000-5010"]')
            await port.wait_for()
            pairs = port.locator(".pair")
            assert await pairs.count() == 1
            line = await pairs.first.inner_text()
            assert "5000-5010" in line and "11 ports" in line and "198.18.2.1" in line
            await pg.screenshot(path=str(SHOTS / "netcheck-page-range.png"), full_page=True)
        finally:
            await browser.close()


async def test_reload_error_never_registered_and_a_timeline(served: tuple[str, Site]) -> None:
    """The page shows a refused reload (file:line and message) and the agents that never
    registered when its data has them, hides both when not; a click on a failing check shows
    its history (changes and outages, from /api/v1/history) as a timeline."""
    from playwright.async_api import async_playwright

    url, site = served
    site.extra = {
        "config": {
            "error": {
                "file": "/etc/netcheck/inventory.yaml",
                "line": 42,
                "message": "hosts.pio[3].address: not an IP address",
                "at": "2023-11-14T22:10:00Z",
            }
        },
        "never_registered": [{"role": "prem_vm", "host": "vm-9", "address": "198.18.1.99"}],
    }
    site.history = {
        "changes": [
            {"at": "2023-11-14T20:00:00Z", "check_id": DOCKER, "verdict": "pass",
             "state": "open", "cause": "ok"},
            {"at": "2023-11-14T21:00:00Z", "check_id": DOCKER, "verdict": "fail",
             "state": "refused", "cause": "rejected"},
            {"at": "2023-11-14T21:30:00Z", "check_id": DOCKER, "verdict": "pass",
             "state": "open", "cause": "ok"},
            {"at": "2023-11-14T22:00:00Z", "check_id": DOCKER, "verdict": "fail",
             "state": "refused", "cause": "rejected"},
        ],
        "outages": [
            {"check_id": DOCKER, "start": "2023-11-14T21:00:00Z", "end": "2023-11-14T21:30:00Z"},
            {"check_id": DOCKER, "start": "2023-11-14T22:00:00Z", "end": None},
        ],
    }  # fmt: skip
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pg = await browser.new_page(viewport={"width": 1024, "height": 900})
            await pg.goto(url)
            err = pg.locator("#config-error")
            assert await err.is_visible()
            text = await err.inner_text()
            assert "/etc/netcheck/inventory.yaml:42" in text
            assert "not an IP address" in text and "previous configuration" in text
            nr = pg.locator("#never-registered")
            assert "vm-9 (prem_vm, 198.18.1.99)" in await nr.inner_text()
            for banner in (err, nr):  # re-rendered by the script: no "null", "undefined"
                assert not re.search(r"\bnull\b|undefined", await banner.inner_text())
            await pg.locator(f'#failures tr[data-check="{DOCKER}"]').click()
            timeline = pg.locator("#details .timeline")
            await timeline.wait_for()
            assert f"check={DOCKER}" in site.history_asked[-1].replace("%3A", ":").replace(
                "%3E", ">"
            )
            assert await timeline.locator(".lane .outage").count() == 2
            assert await timeline.locator(".lane .outage.open").count() == 1
            assert await timeline.locator(".lane .change").count() == 4
            assert "failing since 2023-11-14T22:00:00Z" in await timeline.inner_text()
            m = await pg.evaluate(MEASURE)
            _assert_readable(m, 1024)
            await pg.screenshot(path=str(SHOTS / "netcheck-page-history.png"), full_page=True)
            # an interaction's history, and the banners gone once the data has neither
            await pg.locator('.edge-label[data-interaction="5"]').click()
            await pg.locator("#details .timeline h3").filter(has_text="interaction 5").wait_for()
            assert "interaction=5" in site.history_asked[-1]
            site.extra = {}
            await pg.wait_for_function(
                "document.getElementById('config-error').hidden"
                " && document.getElementById('never-registered').hidden",
                timeout=8000,
            )
            # no history endpoint: the details say so, nothing breaks
            site.history = None
            await pg.locator('.edge-label[data-interaction="6"]').click()
            await pg.locator("#details").filter(has_text="no history on this controller").wait_for()
        finally:
            await browser.close()


async def test_an_exported_page_carries_its_details(served: tuple[str, Site]) -> None:
    """The exported page (format=html, no refresh) works from a file: a click shows the
    interaction's details it carries, nothing is fetched."""
    from playwright.async_api import async_playwright

    _, site = served
    gates = gates_for(site.spec, site.inv, site.ev)
    html = render_page(site.spec, site.ev, gates, refresh_seconds=None)
    path = SHOTS / "netcheck-exported-test.html"
    path.write_text(html)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pg = await browser.new_page(viewport={"width": 1280, "height": 900})
            asked: list[str] = []
            pg.on("request", lambda r: asked.append(r.url))
            await pg.goto(path.as_uri())
            await pg.locator('.edge-label[data-interaction="4"]').click()
            failing = pg.locator(f'#details .pair.verdict-fail[data-check="{DOCKER}"]')
            await failing.wait_for()
            await pg.locator('.role[data-role="pio"]').click()
            await pg.locator("#details h2").filter(has_text="HDM PIO Appliance").wait_for()
            assert [u for u in asked if not u.startswith("file:")] == []
        finally:
            await browser.close()
            path.unlink()


def _with_guest_and_path(site: Site, tmp: Path) -> Evaluation:
    """The site with web-01's guest agent reporting (the real agent's facts from a RHEL 7.4
    tree, booted MBR where the inventory says UEFI, VMware tools not running) and interaction
    9's path measured: MTU and round trip inside their thresholds, throughput up 60 Mbit/s
    short of the 1 Gbit/s."""
    g = guests()[0]
    root = g.write(tmp)
    facts = collect(Root(str(root), proc=str(root / "no-proc"), kernel=g.kernel), user="hdm")
    values = {"vmware_tools.running": False, "boot.matrix": "MBR", "net.static_ip": False}
    facts = [{**f, "value": values[f["name"]]} if f["name"] in values else f for f in facts]
    pm, cm = site.inv.of_role("prem_manager")[0], site.inv.of_role("cloud_manager")[0]
    m = PathMeasurement(9, pm.name, cm.name, cm.address, 6000, NOW - 5, mtu=1400,
                        route_mtu=1500, icmp=True, rtt_avg_s=0.0123, rtt_min_s=0.011,
                        rtt_max_s=0.015, jitter_s=0.0008, loss=0.0, up_mbit_s=940.0,
                        down_mbit_s=1210.0)  # fmt: skip
    ev = site.ev
    seen = Observed(
        results=tuple(r.result for r in ev.rows if r.result is not None),
        listeners=ev.listeners,
        agents=ev.agents,
        guest_facts={"web-01": guest_facts("web-01", facts, NOW - 5)},
        paths={(9, pm.name, cm.name): m},
    )
    return evaluate(site.spec, expected(site.spec, site.inv), seen, NOW)


# Every cell of the VM table and of the details' figure tables: its content within its box,
# and each table within its card.
CELLS = """() => {
  const out = [];
  for (const v of document.querySelectorAll("#details .vm-item")) {
    const card = v.closest(".card").getBoundingClientRect();
    const right = v.getBoundingClientRect().right - card.right;
    const spill = Math.max(v.scrollWidth - v.clientWidth, right);
    out.push({ what: "vm " + v.dataset.vm, spill });
  }
  for (const t of document.querySelectorAll("#vms, #details table.figures")) {
    const card = t.closest(".card").getBoundingClientRect();
    const r = t.getBoundingClientRect();
    out.push({ what: "table " + (t.id || t.className), spill: r.right - card.right });
    for (const td of t.querySelectorAll("td, th")) {
      const spill = td.scrollWidth - td.clientWidth;
      out.push({ what: td.textContent.trim().slice(0, 40), spill });
    }
  }
  return out;
}"""


async def test_vm_readiness_and_path_figures_read_at_every_width(
    served: tuple[str, Site], tmp_path: Path
) -> None:
    """The VM readiness table: web-01 blocks the warm modes at step 1 (VMware tools not
    running), its OS and boot mode from the guest, the inventory's UEFI named; a VM with no
    guest agent lists its unknown facts and why. The gate banner says the interconnect is not
    qualified; interaction 9's details show each figure against its threshold with its
    margin. At 1,024, 1,280 and 1,600 px: text at 11 px or more, no overlap, no cell spilling
    out of its box; a VM role's details list its VMs."""
    from playwright.async_api import async_playwright

    url, site = served
    site.ev = _with_guest_and_path(site, tmp_path)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for width in WIDTHS:
                pg = await browser.new_page(viewport={"width": width, "height": 900})
                await pg.goto(url)
                web01 = pg.locator('#vms tr.vm[data-vm="web-01"]')
                text = await web01.inner_text()
                for part in ("RHEL 7.4", "MBR", "guest", "blocks", "step 1", "not running"):
                    assert part in text, (part, text)
                notes = await pg.locator('#vms tr.vm-notes[data-vm="web-01"]').inner_text()
                assert "the inventory says RHEL 7.4 UEFI" in notes
                db = await pg.locator('#vms tr.vm[data-vm="db-01"]').inner_text()
                assert "Windows Server 2016" in db and "inventory" in db and "unknown" in db
                why = await pg.locator('#vms tr.vm-notes[data-vm="cloud-vm-1"]').inner_text()
                assert "no guest agent report" in why and "vmware_tools.running" in why
                assert await pg.locator("#vms tr.vm").count() == 4
                chip = await pg.locator("#interconnect-chip").inner_text()
                assert "NOT QUALIFIED" in chip and "1 fail" in chip
                await pg.locator('.edge-label[data-interaction="9"]').click()
                path = pg.locator('#details .path[data-path="prem-mgr>cloud-mgr"]')
                await path.wait_for()
                up = await path.locator('tr[data-figure="throughput_up"]').inner_text()
                for part in ("940 Mbit/s", "≥ 1000", "−60", "fail"):
                    assert part in up, (part, up)
                rtt = await path.locator('tr[data-figure="rtt"]').inner_text()
                assert "12.3 ms" in rtt and "≤ 30.0" in rtt and "+17.7" in rtt and "pass" in rtt
                assert "jitter 0.8 ms" in await path.inner_text()
                _assert_readable(await pg.evaluate(MEASURE), width)
                spilled = [c for c in await pg.evaluate(CELLS) if c["spill"] > 1]
                assert not spilled, (width, spilled)
                await pg.screenshot(path=str(SHOTS / f"netcheck-vms-{width}.png"), full_page=True)
                await pg.locator('.role[data-role="prem_vm"]').click()
                await pg.locator("#details .vm-item").first.wait_for()
                assert await pg.locator("#details .vm-item").count() == 2
                item = await pg.locator('#details .vm-item[data-vm="web-01"]').inner_text()
                assert "warm_vcd blocks" in item and "step 1" in item and "boot MBR (guest)" in item
                _assert_readable(await pg.evaluate(MEASURE), width)
                spilled = [c for c in await pg.evaluate(CELLS) if c["spill"] > 1]
                assert not spilled, (width, "role details", spilled)
                await pg.close()
        finally:
            await browser.close()
