"""The controller's HTTP API on a real aiohttp server and a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import io
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from check_helpers import result_for

from netcheck.agent.wire import (
    ProbeResult,
    ProbeState,
    Registration,
    ResultBatch,
    check_id,
    encode,
    plan_digest,
)
from netcheck.controller import schema
from netcheck.controller.app import make_app
from netcheck.controller.appkeys import EVALUATION, LIVE, STORE, WRITER
from netcheck.controller.evalcache import Generation
from netcheck.controller.expand import expand, expected
from netcheck.controller.gctune import GC_THRESHOLD, SWITCH_INTERVAL_S, tune_gc, tune_switching
from netcheck.controller.inventory import Inventory, load_inventory
from netcheck.controller.schema import SchemaError
from netcheck.controller.spec import Spec
from netcheck.controller.store import Store

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def start(app: web.Application) -> TestClient[web.Request, web.Application]:
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(
    spec: Spec, inv: Inventory, tmp_path: Path
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    c = await start(make_app(spec, inv, tmp_path / "nc.sqlite", TOKEN))
    yield c
    await c.close()


def reg(role: str = "pio", host: str = "pio-1") -> dict[str, Any]:
    return encode(Registration(role, host, "198.18.1.10", "0.1", "connect"))  # type: ignore[no-any-return]


def pio_results(spec: Spec, inv: Inventory, state: ProbeState = "open") -> list[ProbeResult]:
    return [
        result_for(c, state, started_at=time.time() - 1, attempts=1, latency_s=None)
        for c in expand(spec, inv)
        if c.src_host == "pio-1"
    ]


def batch(spec: Spec, inv: Inventory, **kw: Any) -> dict[str, Any]:
    b = ResultBatch(role="pio", host="pio-1", results=tuple(pio_results(spec, inv)), **kw)
    return encode(b)  # type: ignore[no-any-return]


async def metric_value(client: TestClient[web.Request, web.Application], line_start: str) -> float:
    text = await (await client.get("/metrics")).text()
    (line,) = [x for x in text.splitlines() if x.startswith(line_start + " ")]
    return float(line.rsplit(" ", 1)[1])


async def test_register_returns_the_plan(
    client: TestClient[web.Request, web.Application], spec: Spec, inv: Inventory
) -> None:
    r = await client.post("/api/v1/register", json=reg(), headers=AUTH)
    assert r.status == 200
    plan = await r.json()
    assert (plan["role"], plan["host"], plan["address"]) == ("pio", "pio-1", "198.18.1.10")
    assert len(plan["checks"]) == len(pio_results(spec, inv))
    assert 32820 in [x["port"] for x in plan["listen"]]
    r = await client.get("/api/v1/plan?role=pio&host=pio-1", headers=AUTH)
    assert (await r.json()) == plan
    assert (await client.get("/api/v1/plan?role=pio&host=pio-1")).status == 401


@pytest.mark.parametrize(
    ("body", "headers", "status", "words"),
    [
        (reg(), {}, 401, "token"),
        (reg(), {"Authorization": "Bearer wrong"}, 401, "token"),
        (reg(), {"Authorization": TOKEN}, 401, "token"),
        (reg("pio", "nope"), AUTH, 403, "not a pio host"),
        (reg("prem_vcenter", "prem-vc"), AUTH, 403, "does not run an agent"),
        (reg("ghost", "pio-1"), AUTH, 403, "unknown role"),
        ({**reg(), "extra": 1}, AUTH, 400, "extra"),
        ({**reg(), "mode": "udp"}, AUTH, 400, "mode"),
    ],
)
async def test_register_refusals(
    client: TestClient[web.Request, web.Application],
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
    words: str,
) -> None:
    r = await client.post("/api/v1/register", json=body, headers=headers)
    assert r.status == status
    assert words in (await r.json())["error"]
    assert json.loads(await (await client.get("/healthz")).text())["agents"] == 0


async def test_results_refusals_store_nothing(
    client: TestClient[web.Request, web.Application], spec: Spec, inv: Inventory
) -> None:
    good = batch(spec, inv)
    r = await client.post("/api/v1/results", json=good, headers=AUTH)
    assert (r.status, (await r.json())["error"]) == (409, "unknown agent 'pio-1': register first")
    assert (await client.post("/api/v1/register", json=reg(), headers=AUTH)).status == 200

    wrong_src = json.loads(json.dumps(good))
    wrong_src["results"][-1]["src_host"] = "prem-mgr"
    bad_id = json.loads(json.dumps(good))
    bad_id["results"][0]["check_id"] = check_id(4, "pio-1", "prem-mgr", 1)
    unknown_key = json.loads(json.dumps(good))
    unknown_key["results"][0]["colour"] = "red"
    cases: list[tuple[Any, dict[str, str], int, str]] = [
        (good, {"Authorization": "Bearer nope"}, 401, "token"),
        ({**good, "role": "user"}, AUTH, 403, "registered as pio, not user"),
        (wrong_src, AUTH, 400, "is not the batch host"),
        (bad_id, AUTH, 400, "does not match"),
        (unknown_key, AUTH, 400, "colour"),
        ({**good, "dropped": -1}, AUTH, 400, "dropped: Input should be greater than"),
        ({**good, "wire_version": 9}, AUTH, 400, "wire_version"),
    ]
    for body, headers, status, words in cases:
        r = await client.post("/api/v1/results", json=body, headers=headers)
        assert r.status == status, await r.text()
        assert words in (await r.json())["error"]
    r = await client.post("/api/v1/results", data=b"{not json", headers=AUTH)
    assert r.status == 400
    r = await client.post(
        "/api/v1/results", data=io.BytesIO(b"x" * (9 * 1024 * 1024)), headers=AUTH
    )
    assert r.status == 413
    assert await metric_value(client, "netcheck_results_ingested_total") == 0
    assert await metric_value(client, 'netcheck_batches_rejected_total{reason="schema"}') == 6
    # a 401 is counted in memory only: it writes nothing (issue 11)
    assert await metric_value(client, 'netcheck_refusals_total{reason="auth"}') == 1
    assert await metric_value(client, 'netcheck_batches_rejected_total{reason="auth"}') == 0
    assert await metric_value(client, 'netcheck_batches_rejected_total{reason="role"}') == 2
    assert await metric_value(client, 'netcheck_batches_rejected_total{reason="size"}') == 1
    gate = await (await client.get("/api/v1/gate?mode=deployment")).json()
    assert all(b["cause"] == "not_tested" for b in gate["blocking"])


async def test_results_gate_and_restart(spec: Spec, inv: Inventory, tmp_path: Path) -> None:
    db = tmp_path / "nc.sqlite"
    client = await start(make_app(spec, inv, db, TOKEN))
    try:
        assert (await client.post("/api/v1/register", json=reg(), headers=AUTH)).status == 200
        body = batch(spec, inv, dropped=4)
        r = await client.post("/api/v1/results", json=body, headers=AUTH)
        ack = await r.json()
        assert ack == {"accepted": len(body["results"]), "plan_digest": ack["plan_digest"]}
        plan = await client.get("/api/v1/plan?role=pio&host=pio-1", headers=AUTH)
        assert ack["plan_digest"] == (await plan.json())["plan_digest"]  # the sender's plan
        r = await client.get("/api/v1/gate?mode=deployment")
        assert r.status == 200
        before = await r.json()
        assert before["decision"] == "no-go"  # others have not reported
        assert {b["src_role"] for b in before["blocking"]} == {
            "user",
            "cloud_cache",
            "prem_manager",
        }
        assert (await client.get("/api/v1/gate?mode=nope")).status == 400
        r = await client.get("/api/v1/gate?mode=warm_vcd&vm=pio-1")
        assert r.status == 400
        assert "'pio-1' is a pio host, not a guest VM" in (await r.json())["error"]
        vm = await (await client.get("/api/v1/gate?mode=warm_vcd&vm=db-01")).json()
        assert (
            "Windows Server 2016 (64 bit) UEFI: Not Supported for warm_vcd (VCD WARM)"
            in (vm["reasons"])
        )
    finally:
        await client.close()
    # A new app on the same file: everything acknowledged is still there.
    client = await start(make_app(spec, inv, db, TOKEN))
    try:
        after = await (await client.get("/api/v1/gate?mode=deployment")).json()
        assert after == before
        assert await metric_value(client, "netcheck_results_ingested_total") == len(body["results"])
        assert (
            await metric_value(
                client, 'netcheck_agent_dropped_results_total{host="pio-1",role="pio"}'
            )
            == 4
        )
    finally:
        await client.close()


async def test_report_and_page(
    client: TestClient[web.Request, web.Application], spec: Spec, inv: Inventory
) -> None:
    await client.post("/api/v1/register", json=reg(), headers=AUTH)
    await client.post("/api/v1/results", json=batch(spec, inv), headers=AUTH)
    r = await client.get("/api/v1/report?format=json")
    assert r.status == 200
    data = await r.json()
    assert "deployment" in json.dumps(data)
    for fmt in ("table", "markdown", "junit", "html"):
        r = await client.get(f"/api/v1/report?format={fmt}")
        assert r.status == 200, fmt
        assert "pio-1" in await r.text(), fmt
    assert (await client.get("/api/v1/report?format=pdf")).status == 400
    r = await client.get("/")
    assert r.status == 200
    assert "<svg" in await r.text()


def crowd_inventory(spec: Spec, tmp_path: Path, n: int) -> Inventory:
    """The example site with ``n`` cloud VMs (each one an agent)."""
    import yaml

    doc = yaml.safe_load((REPO / "inventory.example.yaml").read_text())
    doc["hosts"]["cloud_vm"] = [
        {"name": f"vm-{i}", "address": f"198.18.{20 + i // 250}.{i % 250 + 1}"} for i in range(n)
    ]
    path = tmp_path / "crowd.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_inventory(path, spec)


def vm_batch(i: int, ports: int = 5) -> dict[str, Any]:
    host, now = f"vm-{i}", time.time()
    results = [
        ProbeResult(
            check_id=check_id(15, host, "cloud-cache", 9000 + k),
            interaction=15,
            src_host=host,
            src_address=f"198.18.{20 + i // 250}.{i % 250 + 1}",
            dst_host="cloud-cache",
            dst_address="198.18.2.40",
            port=9000 + k,
            state="open",
            mode="connect",
            attempts=1,
            started_at=now - 1,
        )
        for k in range(ports)
    ]
    return encode(ResultBatch("cloud_vm", host, results=tuple(results), sent_at=now))  # type: ignore[no-any-return]


async def register_crowd(client: TestClient[web.Request, web.Application], n: int) -> None:
    for i in range(n):
        body = encode(Registration("cloud_vm", f"vm-{i}", "198.18.20.1", "0.1", "connect"))
        assert (await client.post("/api/v1/register", json=body, headers=AUTH)).status == 200


def stored_hosts(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db)) as c:
        return dict(c.execute("SELECT src_host, count(*) FROM results GROUP BY src_host"))


async def test_concurrent_posts_are_group_committed(spec: Spec, tmp_path: Path) -> None:
    n = 200
    inv = crowd_inventory(spec, tmp_path, n)
    db = tmp_path / "nc.sqlite"
    client = await start(make_app(spec, inv, db, TOKEN))
    try:
        await register_crowd(client, n)
        bodies = [vm_batch(i) for i in range(n)]
        bodies[17]["results"][2]["src_host"] = "vm-18"  # refused before it joins a group
        answers = await asyncio.gather(
            *(client.post("/api/v1/results", json=b, headers=AUTH) for b in bodies)
        )
        statuses = [a.status for a in answers]
        assert statuses[17] == 400
        assert "is not the batch host" in (await answers[17].json())["error"]
        assert statuses.count(200) == n - 1
        acks = [await a.json() for a in answers if a.status == 200]
        assert [a["accepted"] for a in acks] == [5] * (n - 1)
        assert client.app is not None
        groups = client.app[WRITER].groups
        assert groups < n  # batches shared transactions (one fsync per group)
    finally:
        await client.close()
    # Acknowledged = committed: every acknowledged batch is in the file, the bad one is not.
    assert stored_hosts(db) == {f"vm-{i}": 5 for i in range(n) if i != 17}
    store = Store.open(db)
    assert store.counters()["batches_ingested"] == n - 1
    assert store.counters()["rejected:schema"] == 1
    store.close()


async def test_a_failed_group_keeps_nothing_and_answers_500(spec: Spec, tmp_path: Path) -> None:
    n = 40
    inv = crowd_inventory(spec, tmp_path, n)
    db = tmp_path / "nc.sqlite"
    client = await start(make_app(spec, inv, db, TOKEN))
    try:
        await register_crowd(client, n)
        # A real database failure for one batch: SQLite aborts the insert of vm-7's results.
        with contextlib.closing(sqlite3.connect(db)) as c:
            c.execute(
                "CREATE TRIGGER boom BEFORE INSERT ON results WHEN NEW.src_host = 'vm-7' "
                "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
            )
            c.commit()
        answers = await asyncio.gather(
            *(client.post("/api/v1/results", json=vm_batch(i), headers=AUTH) for i in range(n))
        )
        statuses = {f"vm-{i}": a.status for i, a in enumerate(answers)}
        assert statuses["vm-7"] == 500
        assert "not stored" in (await answers[7].json())["error"]
        # The failed group is written again batch by batch: only vm-7 fails.
        assert {h for h, s in statuses.items() if s != 200} == {"vm-7"}
        ok = {h for h, s in statuses.items() if s == 200}
        health = json.loads(await (await client.get("/healthz")).text())
        assert health["results"] == 5 * len(ok)
    finally:
        await client.close()
    # Exactly the acknowledged batches are stored: the failed group's others left no trace.
    assert set(stored_hosts(db)) == ok
    store = Store.open(db)
    assert store.counters().get("batches_ingested", 0) == len(ok)
    store.close()


async def test_plans_come_from_the_checks_expanded_once(
    client: TestClient[web.Request, web.Application], spec: Spec, inv: Inventory
) -> None:
    from netcheck.controller.expand import plan_for

    for role, host in [("pio", "pio-1"), ("prem_manager", "prem-mgr"), ("cloud_vm", "cloud-vm-2")]:
        address = next(h.address for h in inv.of_role(role) if h.name == host)
        r = await client.get(f"/api/v1/plan?role={role}&host={host}", headers=AUTH)
        want = plan_for(spec, inv, role, host, address)
        digest = plan_digest(want)  # the plan's canonical encoding, its digest left out
        assert (await r.json()) == encode(dataclasses.replace(want, plan_digest=digest))
    assert client.app is not None
    assert client.app[LIVE].current.expected == expected(spec, inv)


async def test_evaluation_is_cached_per_store_version_and_second(
    spec: Spec, inv: Inventory, tmp_path: Path
) -> None:
    now = [time.time()]
    app = make_app(spec, inv, tmp_path / "nc.sqlite", TOKEN, clock=lambda: now[0])
    client = await start(app)
    try:
        cache = app[EVALUATION]
        for path in ("/", "/metrics", "/api/v1/report?format=json", "/api/v1/gate?mode=deployment"):
            assert (await client.get(path)).status == 200
        assert cache.computed == 1  # four readers, one evaluation
        await client.post("/api/v1/register", json=reg(), headers=AUTH)
        await client.post("/api/v1/results", json=batch(spec, inv), headers=AUTH)
        # The gate reads its own writes (the report may answer with the previous generation
        # while the new one is computed): after it, the report is of the new generation.
        assert (await client.get("/api/v1/gate?mode=deployment")).status == 200
        report = await (await client.get("/api/v1/report?format=json")).json()
        assert cache.computed == 2  # a commit: recomputed
        states = {c["cause"] for c in report["checks"] if c["src_host"] == "pio-1"}
        assert "stale" not in states
        # No write, but time passes: results age to stale without any new commit.
        now[0] += spec.policy.freshness_seconds + 5
        assert (await client.get("/api/v1/gate?mode=deployment")).status == 200
        report = await (await client.get("/api/v1/report?format=json")).json()
        assert cache.computed == 3
        causes = {c["cause"] for c in report["checks"] if c["src_host"] == "pio-1"}
        assert causes == {"stale"}
    finally:
        await client.close()


async def test_the_primed_report_is_the_one_readers_get(
    spec: Spec, inv: Inventory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background derives the JSON report in every generation (prime), under the same
    slot a reader asks for: each generation renders it once, and a reader never renders it
    again in its own thread (a different key rendered each generation's report twice)."""
    from netcheck.controller.render import json_report

    # The evaluation of each render: the patch is module-wide, and an app of an earlier test
    # may still be rendering in a background thread of this process; only this app's count.
    renders: list[object] = []
    real = json_report.render

    def counted(*args: Any, **kw: Any) -> str:
        renders.append(kw["ev"] if "ev" in kw else args[1])
        return real(*args, **kw)

    def rendered(gen: Generation | None) -> int:
        assert gen is not None
        return sum(ev is gen.ev for ev in renders)

    monkeypatch.setattr(json_report, "render", counted)
    now = [time.time()]
    app = make_app(spec, inv, tmp_path / "nc.sqlite", TOKEN, clock=lambda: now[0])
    client = await start(app)
    try:
        cache = app[EVALUATION]
        for _ in range(3):  # the primed generation: rendered once, before any reader
            assert (await client.get("/api/v1/report?format=json")).status == 200
        first = cache.latest()
        assert (cache.computed, rendered(first)) == (1, 1)
        await client.post("/api/v1/register", json=reg(), headers=AUTH)
        await client.post("/api/v1/results", json=batch(spec, inv), headers=AUTH)
        assert (await client.get("/api/v1/gate?mode=deployment")).status == 200  # fresh
        for _ in range(3):
            assert (await client.get("/api/v1/report?format=json")).status == 200
        second = cache.latest()
        assert second is not first
        assert (cache.computed, rendered(first), rendered(second)) == (2, 1, 1)
    finally:
        await client.close()


async def test_a_database_newer_than_the_code_stops_the_start(
    spec: Spec, inv: Inventory, tmp_path: Path
) -> None:
    """Start-up stops at the store's context; the file stays as it was."""
    db = tmp_path / "future.sqlite"
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute(f"PRAGMA user_version = {schema.VERSION + 1}")
    before = db.read_bytes()
    app = make_app(spec, inv, db, TOKEN)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    try:
        with pytest.raises(SchemaError, match="newer than this netcheck"):
            await client.start_server()
    finally:
        await client.close()
    assert LIVE in app  # the context before the store's had started
    assert STORE not in app and WRITER not in app
    assert db.read_bytes() == before


async def test_the_app_leaves_the_garbage_collector_alone(
    client: TestClient[web.Request, web.Application],
) -> None:
    before = gc.get_threshold(), sys.getswitchinterval()
    assert (await client.get("/healthz")).status == 200
    assert (gc.get_threshold(), sys.getswitchinterval()) == before


async def test_tune_switching_shortens_the_switch_interval() -> None:
    before = sys.getswitchinterval()
    try:
        await tune_switching(web.Application())
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
        assert before > SWITCH_INTERVAL_S
    finally:
        sys.setswitchinterval(before)


async def test_tune_gc_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        await tune_gc(web.Application())
        assert gc.get_threshold() == (GC_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_handlers_do_not_import_the_factory() -> None:
    code = "import sys, netcheck.controller.routes; print('netcheck.controller.app' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
