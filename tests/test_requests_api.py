"""The request channel on a real controller (aiohttp server, SQLite file): the operator
creates requests, the agent gets them in its answers, acknowledges and reports; bad input is
refused with the reason; the exposure findings reach the JSON and Markdown reports and the
metrics."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from netcheck.agent.wire import OpenPort, Registration, RequestReport, SweptHost, encode
from netcheck.controller.app import make_app
from netcheck.controller.inventory import Inventory
from netcheck.controller.requests import RequestBook, RequestError, make_requests, params_for
from netcheck.controller.spec import Spec

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789"
READ = "read-token-9876543210"
AGENT = {"Authorization": f"Bearer {TOKEN}"}
OPERATOR = {"Authorization": f"Bearer {READ}"}
Client = TestClient[web.Request, web.Application]


async def _client(app: web.Application) -> Client:
    c = TestClient(TestServer(app, host="127.0.0.1"))
    await c.start_server()
    return c


@pytest.fixture
async def client(spec: Spec, inv: Inventory, tmp_path: Path) -> AsyncIterator[Client]:
    app = make_app(spec, inv, tmp_path / "nc.sqlite", TOKEN, read_token=READ, open_reads=False)
    c = await _client(app)
    yield c
    await c.close()


def _pio(inv: Inventory) -> tuple[str, str]:
    h = inv.of_role("pio")[0]
    return h.name, h.address


async def _register(client: Client, inv: Inventory) -> dict[str, Any]:
    host, address = _pio(inv)
    reg = encode(Registration("pio", host, address, "0.1", "syn"))
    resp = await client.post("/api/v1/register", json=reg, headers=AGENT)
    assert resp.status == 200, await resp.text()
    plan: dict[str, Any] = await resp.json()
    return plan


async def _exchange(client: Client, host: str, *reports: RequestReport) -> Any:
    body = {"role": "pio", "host": host, "reports": [encode(r) for r in reports]}
    return await client.post("/api/v1/agent-requests", json=body, headers=AGENT)


async def test_requests_go_to_the_agent_and_its_report_becomes_findings(
    client: Client, inv: Inventory
) -> None:
    plan = await _register(client, inv)
    host = plan["host"]
    resp = await client.post(
        "/api/v1/requests",
        json={"kind": "exposure", "role": "pio", "host": host, "params": {"rate": 5000}},
        headers=OPERATOR,
    )
    assert resp.status == 201, await resp.text()
    (made,) = (await resp.json())["requests"]
    assert made["kind"] == "exposure" and made["host"] == host
    assert {p["name"]: p["value"] for p in made["params"]}["rate"] == 5000

    # handed over in the results ack, and in the exchange's answer, until acknowledged
    batch = {"role": "pio", "host": host, "results": [], "sent_at": time.time()}
    ack = await (await client.post("/api/v1/results", json=batch, headers=AGENT)).json()
    assert [r["id"] for r in ack["requests"]] == [made["id"]]
    answer = await (await _exchange(client, host)).json()
    assert [r["id"] for r in answer["requests"]] == [made["id"]]
    running = RequestReport(made["id"], "exposure", "running", time.time())
    answer = await (await _exchange(client, host, running)).json()
    assert answer == {"accepted": 1, "requests": []}
    ack = await (await client.post("/api/v1/results", json=batch, headers=AGENT)).json()
    assert "requests" not in ack

    dst = plan["checks"][0]
    documented = dst["port"]
    swept = SweptHost(dst["dst_host"], dst["dst_address"], 65535, "syn", 1.5, 65532)
    ports = (
        OpenPort(dst["dst_host"], dst["dst_address"], documented),
        OpenPort(dst["dst_host"], dst["dst_address"], 2222, "SSH-2.0-OpenSSH_9.2"),
        OpenPort(dst["dst_host"], dst["dst_address"], 8081),
    )
    done = RequestReport(made["id"], "exposure", "done", time.time(), "ok", (swept,), ports)
    resp = await _exchange(client, host, done)
    assert resp.status == 200, await resp.text()
    # the same end sent again (an agent that did not see the answer) is taken, not doubled
    assert (await _exchange(client, host, done)).status == 200

    stored = await (await client.get(f"/api/v1/requests?id={made['id']}", headers=OPERATOR)).json()
    assert stored["state"] == "done"
    assert len(stored["report"]["open_ports"]) == 3

    report = await _report(client, "json")
    exposure = report["exposure"]
    assert [(f["dst_host"], f["port"], f["banner"]) for f in exposure["findings"]] == [
        (dst["dst_host"], 2222, "SSH-2.0-OpenSSH_9.2"),
        (dst["dst_host"], 8081, ""),
    ]
    assert exposure["sweeps"][0]["documented_open"] == 1
    assert exposure["close"][0]["ports"] == "2222, 8081"
    md = await _report(client, "markdown")
    assert "### Close these" in md and "2222, 8081" in md
    metrics = await (await client.get("/metrics", headers=OPERATOR)).text()
    line = next(x for x in metrics.splitlines() if x.startswith("netcheck_exposure_open_ports{"))
    assert f'dst_host="{dst["dst_host"]}"' in line and line.endswith(" 2.0")


async def _report(client: Client, fmt: str) -> Any:
    for _ in range(50):  # the report follows the request book within its refresh
        resp = await client.get(f"/api/v1/report?format={fmt}", headers=OPERATOR)
        text = await resp.text()
        found = (
            json.loads(text).get("exposure", {}).get("sweeps")
            if fmt == "json"
            else ("Exposure audit" in text)
        )
        if found:
            return json.loads(text) if fmt == "json" else text
        import asyncio

        await asyncio.sleep(0.1)
    raise AssertionError(f"no exposure in the {fmt} report")


async def test_bad_reports_are_refused_with_the_reason(client: Client, inv: Inventory) -> None:
    plan = await _register(client, inv)
    host = plan["host"]
    resp = await client.post(
        "/api/v1/requests", json={"kind": "exposure", "host": host}, headers=OPERATOR
    )
    rid = (await resp.json())["requests"][0]["id"]
    unknown = RequestReport("no-such-id", "exposure", "running", time.time())
    resp = await _exchange(client, host, unknown)
    assert resp.status == 404 and "no-such-id" in (await resp.json())["error"]
    # an address the agent's plan does not probe
    foreign = OpenPort("elsewhere", "198.18.99.99", 22)
    bad = RequestReport(rid, "exposure", "done", time.time(), "", (), (foreign,))
    resp = await _exchange(client, host, bad)
    assert resp.status == 400
    assert "198.18.99.99 is not a destination of this agent's plan" in (await resp.json())["error"]
    # not this agent's request
    other = inv.of_role("pio")[1].name if len(inv.of_role("pio")) > 1 else None
    if other is not None:
        resp = await _exchange(client, other, RequestReport(rid, "exposure", "running", 1.0))
        assert resp.status == 403
    # a malformed exchange: the decoder's words
    resp = await client.post(
        "/api/v1/agent-requests", json={"role": "pio", "host": host, "x": 1}, headers=AGENT
    )
    assert resp.status == 400 and "x" in (await resp.json())["error"]
    # nothing of the refused reports was stored
    stored = await (await client.get(f"/api/v1/requests?id={rid}", headers=OPERATOR)).json()
    assert stored["state"] == "pending"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"kind": "nope"}, "unknown request kind"),
        ({"kind": "exposure", "params": {"rate": 0}}, "rate 0 is not within"),
        ({"kind": "exposure", "params": {"speed": 1}}, "unknown parameter"),
        ({"kind": "exposure", "params": {"rate": True}}, "must be a number"),
        ({"kind": "exposure", "role": "prem_esxi"}, "does not run an agent"),
        ({"kind": "exposure", "host": "no-such-host"}, "no agent host 'no-such-host'"),
        ({"kind": "exposure", "deadline_s": 10**9}, "deadline"),
        ({"kind": "exposure", "extra": 1}, "unknown field"),
    ],
)
async def test_bad_requests_are_refused(client: Client, body: dict[str, Any], words: str) -> None:
    resp = await client.post("/api/v1/requests", json=body, headers=OPERATOR)
    assert resp.status == 400
    assert words in (await resp.json())["error"]


async def test_requests_need_the_operator(spec: Spec, inv: Inventory, tmp_path: Path) -> None:
    """No read credential: 401; reads open: creating requests is refused (403)."""
    app = make_app(spec, inv, tmp_path / "a.sqlite", TOKEN, read_token=READ, open_reads=False)
    c = await _client(app)
    try:
        resp = await c.post("/api/v1/requests", json={"kind": "exposure"}, headers=AGENT)
        assert resp.status == 401
    finally:
        await c.close()
    c = await _client(make_app(spec, inv, tmp_path / "b.sqlite", TOKEN))
    try:
        resp = await c.post("/api/v1/requests", json={"kind": "exposure"})
        assert resp.status == 403 and "--read-token-file" in (await resp.json())["error"]
    finally:
        await c.close()


def test_book_expires_and_survives_a_restart(spec: Spec, inv: Inventory, tmp_path: Path) -> None:
    now = [1000.0]
    db = tmp_path / "book.sqlite"
    book = RequestBook.open(db, clock=lambda: now[0])
    made = make_requests(spec, inv, "exposure", {}, now[0], role="pio", deadline_s=60)
    book.add(made, "cli")
    book.close()
    book = RequestBook.open(db, clock=lambda: now[0])  # another process: the same rows
    assert book.pending(made[0].role, made[0].host) == (made[0],)
    now[0] += 61
    book.refresh()
    assert book.pending(made[0].role, made[0].host) == ()
    assert {s.state for s in book.all()} == {"expired"}
    book.close()


def test_params_defaults_and_bounds() -> None:
    got = {p.name: p.value for p in params_for("exposure", {"timeout": 0.5})}
    assert got["timeout"] == 0.5 and got["last_port"] == 65535 and got["retries"] == 1
    with pytest.raises(RequestError, match="first_port is above last_port"):
        params_for("exposure", {"first_port": 100, "last_port": 10})


def _cli(*args: str, cwd: Path = REPO) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "netcheck.controller", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )  # fmt: skip


def test_cli_writes_requests_the_book_hands_over(inv: Inventory, tmp_path: Path) -> None:
    db = tmp_path / "cli.sqlite"
    example = str(REPO / "inventory.example.yaml")
    done = _cli("request", "exposure", "--db", str(db), "--inventory", example,
                "--role", "pio", "--rate", "1000", "--timeout", "0.5")  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    rid, kind, role, host = line.split()
    assert (kind, role, host) == ("exposure", "pio", _pio(inv)[0])
    book = RequestBook.open(db)
    try:
        (req,) = book.pending(role, host)
        assert req.id == rid
        assert {p.name: p.value for p in req.params}["rate"] == 1000
    finally:
        book.close()
    listed = _cli("request", "list", "--db", str(db))
    assert listed.returncode == 0 and f"{rid} exposure pio {host} pending" in listed.stdout
    bad = _cli("request", "exposure", "--db", str(db), "--inventory", example, "--rate", "0")
    assert bad.returncode == 2 and "rate 0 is not within 1-1000000" in bad.stderr


def test_report_from_a_database_has_the_exposure(
    spec: Spec, inv: Inventory, tmp_path: Path
) -> None:
    from netcheck.agent.wire import RequestExchange
    from netcheck.controller.expand import by_source, expected

    db = tmp_path / "local.sqlite"
    book = RequestBook.open(db)
    (req,) = make_requests(spec, inv, "exposure", {}, time.time(), host=_pio(inv)[0])
    book.add([req], "cli")
    plan = by_source(expected(spec, inv).checks)[(req.role, req.host)]
    dst = plan[0].spec
    found = OpenPort(dst.dst_host, dst.dst_address, 3389, "")
    rep = RequestReport(req.id, "exposure", "done", time.time(), "", (), (found,))
    book.take(RequestExchange(req.role, req.host, (rep,)), plan, time.time())
    book.close()
    example = str(REPO / "inventory.example.yaml")
    done = _cli("report", "--format", "json", "--db", str(db), "--inventory", example)
    assert done.returncode == 0, done.stderr
    (finding,) = json.loads(done.stdout)["exposure"]["findings"]
    assert (finding["dst_host"], finding["port"]) == (dst.dst_host, 3389)
    md = _cli("report", "--format", "markdown", "--db", str(db), "--inventory", example)
    assert "port 3389" in md.stdout and "### Close these" in md.stdout


def test_a_failed_sweep_after_a_done_one_does_not_hide_its_findings(
    spec: Spec, inv: Inventory, tmp_path: Path
) -> None:
    """An agent's sweep found an open port; its next sweep failed (or expired): the audit
    keeps the done sweep's findings, names the failed one beside them, and the metric and
    its alert stay on the open port instead of resolving."""
    from netcheck.agent.wire import RequestExchange
    from netcheck.controller import exposure
    from netcheck.controller.expand import by_source, expected

    book = RequestBook.open(tmp_path / "local.sqlite")
    sources = by_source(expected(spec, inv).checks)
    host = _pio(inv)[0]
    (first,) = make_requests(spec, inv, "exposure", {}, time.time(), host=host)
    book.add([first], "cli")
    plan = sources[(first.role, first.host)]
    dst = plan[0].spec
    found = OpenPort(dst.dst_host, dst.dst_address, 3389, "")
    swept = SweptHost(dst.dst_host, dst.dst_address, 65535, "syn", 1.0, 65534)
    done = RequestReport(first.id, "exposure", "done", time.time(), "", (swept,), (found,))
    book.take(RequestExchange(first.role, first.host, (done,)), plan, time.time())
    (second,) = make_requests(spec, inv, "exposure", {}, time.time() + 1, host=host)
    book.add([second], "cli")
    failed = RequestReport(second.id, "exposure", "failed", time.time() + 2, "no raw socket")
    book.take(RequestExchange(second.role, second.host, (failed,)), plan, time.time() + 2)
    book.refresh()
    try:
        audit = exposure.current(book, sources)
        (sweep,) = audit.sweeps
        assert sweep.request_id == first.id and sweep.state == "done"
        assert [(f.dst_host, f.port) for f in audit.findings] == [(dst.dst_host, 3389)]
        assert sweep.newer is not None and sweep.newer.request.id == second.id
        block = exposure.to_dict(audit)["sweeps"][0]["newer"]
        assert block["state"] == "failed" and block["detail"] == "no raw socket"
        assert "failed: no raw socket" in "\n".join(exposure.markdown_section(audit))
        (opened, _, dropped) = exposure.ExposureCollector(book, lambda: sources).collect()
        assert [(s.labels["dst_host"], s.value) for s in opened.samples] == [(dst.dst_host, 1)]
        assert [s.value for s in dropped.samples] == [0]
    finally:
        book.close()
