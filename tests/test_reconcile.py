"""Plans follow the site, piece by piece: the plan digest, reconciling listeners and checks
by difference (pure), a listener whose spec changes keeping its socket, the retired and
widened scopes of a reload, and the controller's reload itself (in process, on real files:
a refused edit keeps what runs; the report's config block validates against the schema)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from pathlib import Path
from typing import Any

import jsonschema
from port_helpers import free_port
from reload_helpers import (
    PIO_ADDRESSES,
    REPO,
    inventory,
    line_of,
    topology,
)
from test_agent_link import MATRIX

from netcheck.agent.listeners import ListenerSet, diff_listeners
from netcheck.agent.protocols import SSH_BANNER
from netcheck.agent.runner import diff_checks
from netcheck.agent.wire import CheckSpec, ListenSpec, Plan, decode, encode, plan_digest
from netcheck.controller.authz import Scope
from netcheck.controller.reload import (
    MAX_RETIRED,
    LiveConfig,
    SiteConfig,
    _retire,
    load_config,
    widened,
)

ADDR = PIO_ADDRESSES["pio-1"]


def spec(port: int, service: str = "tcp", *interactions: int) -> ListenSpec:
    return ListenSpec(port=port, service=service, interactions=interactions)  # type: ignore[arg-type]


def check(port: int, dst: str = "pio-2") -> CheckSpec:
    return CheckSpec(f"4:pio-1>{dst}:{port}", 4, "pio", dst, "127.0.0.22", port, "tcp")


def plan(*checks: CheckSpec, listen: tuple[ListenSpec, ...] = (), period_s: float = 300) -> Plan:
    return Plan("pio", "pio-1", ADDR, listen, checks, period_s=period_s)


# -- the digest ----------------------------------------------------------------------------


def test_the_digest_is_of_the_plan_without_its_own_digest() -> None:
    p = plan(check(22), check(443), listen=(spec(22),))
    digest = plan_digest(p)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert plan_digest(dataclasses.replace(p, plan_digest=digest)) == digest
    # What an agent decodes from the controller's JSON has the same digest (2 and 2.0 alike).
    wire = json.loads(json.dumps(encode(dataclasses.replace(p, plan_digest=digest))))
    wire["timeout_s"] = 2  # JSON does not tell 2 from 2.0
    assert plan_digest(decode(Plan, wire)) == digest
    assert plan_digest(plan(check(22), check(444), listen=(spec(22),))) != digest
    assert plan_digest(plan(check(22), check(443), listen=(spec(22),), period_s=60)) != digest
    assert plan_digest(plan(check(22), check(443), listen=(spec(23),))) != digest


# -- reconcile by difference (pure) --------------------------------------------------------


def test_listeners_are_reconciled_by_difference() -> None:
    listening = {22: spec(22), 80: spec(80), 443: spec(443, "tls", 2)}
    known = [22, 80, 443, 3260]  # 3260: a bind that failed (occupied)
    wanted = [spec(22), spec(443, "tls", 2, 5), spec(3260, "iscsi"), spec(9000)]
    d = diff_listeners(listening, known, wanted)
    assert d.close == (80,)
    assert d.start == (spec(3260, "iscsi"), spec(9000))  # new, and the failed bind again
    assert d.update == (spec(443, "tls", 2, 5),)  # its interactions changed: in place
    assert d.keep == (22,)
    same = diff_listeners(listening, known, listening.values())
    assert same.close == (3260,) and same.start == () and same.update == ()
    assert same.keep == (22, 80, 443)
    assert diff_listeners({}, [], []) == diff_listeners({}, [], ())
    gone = diff_listeners(listening, known, [])
    assert gone.close == (22, 80, 443, 3260) and not (gone.start or gone.update or gone.keep)


def test_checks_are_replaced_by_difference() -> None:
    added, removed, kept = diff_checks([check(22), check(80)], [check(80), check(443)])
    assert [c.port for c in added] == [443]
    assert [c.port for c in removed] == [22]
    assert [c.port for c in kept] == [80]
    assert diff_checks([], []) == ((), (), ())


async def test_a_listener_whose_spec_changes_keeps_its_socket() -> None:
    """tcp -> ssh on the same port: the socket stays (same since, never refused between),
    the next connection gets the SSH banner; a dropped port is reported closed once."""
    kept, dropped = free_port(ADDR), free_port(ADDR)
    listeners = ListenerSet(ADDR, None)
    try:
        first = {s.port: s for s in await listeners.reconcile([spec(kept), spec(dropped)])}
        held = listeners._held[kept].sock
        now = {s.port: s for s in await listeners.reconcile([spec(kept, "ssh", 4)])}
        assert listeners._held[kept].sock is held and now[kept].since == first[kept].since
        assert listeners.last_diff.update == (spec(kept, "ssh", 4),)
        assert now[dropped].state == "closed"
        reader, writer = await asyncio.open_connection(ADDR, kept)
        assert await asyncio.wait_for(reader.readline(), 3) == SSH_BANNER
        writer.close()
        await writer.wait_closed()
        listeners.forget_released()  # reported once; the next picture leaves it out
        assert [s.port for s in listeners.statuses()] == [kept]
        with socket.socket() as s:
            s.bind((ADDR, dropped))
    finally:
        await listeners.close()


# -- what a reload retires and widens --------------------------------------------------------


def test_retired_ids_accumulate_bounded_and_come_back_when_expected_again() -> None:
    a, b, c = frozenset({"a"}), frozenset({"b"}), frozenset({"c"})
    assert _retire(frozenset(), a | b, b) == a
    assert _retire(a, b, c) == a | b
    assert _retire(a | b, c, a) == b | c  # expected again: no longer retired
    many = frozenset(f"x{i}" for i in range(MAX_RETIRED + 10))
    out = _retire(frozenset({"old"}), many, frozenset())
    assert len(out) == MAX_RETIRED and "old" not in out


def test_a_host_keeps_its_earlier_plan_in_scope_after_a_reload() -> None:
    old = {("pio", "pio-1"): Scope("pio", "pio-1", ADDR, frozenset({"a", "b"}), frozenset({22}))}
    new = {
        ("pio", "pio-1"): Scope("pio", "pio-1", ADDR, frozenset({"b", "c"}), frozenset({443})),
        ("pio", "pio-3"): Scope("pio", "pio-3", "127.0.0.23", frozenset({"d"}), frozenset()),
    }
    out = widened(new, old)
    assert out[("pio", "pio-1")].check_ids == {"a", "b", "c"}
    assert out[("pio", "pio-1")].ports == {22, 443}
    assert out[("pio", "pio-3")] == new[("pio", "pio-3")]
    moved = {("pio", "pio-1"): dataclasses.replace(new[("pio", "pio-1")], address="127.0.0.29")}
    assert widened(moved, old) == moved  # another machine now: nothing of the old one


# -- the controller's reload, in process ---------------------------------------------------


def write_site(tmp: Path, ports: list[str], pios: list[str]) -> tuple[Path, Path]:
    (tmp / "matrix.yaml").write_text(MATRIX)
    topo, inv = tmp / "topology.yaml", tmp / "inventory.yaml"
    topo.write_text(topology(ports, 9, 300))
    inv.write_text(inventory(pios, ["vc-1"]))
    return topo, inv


async def test_a_refused_reload_keeps_the_running_configuration(tmp_path: Path) -> None:
    topo, inv = write_site(tmp_path, ["22"], ["pio-1", "pio-2"])
    clock = [1_800_000_000.0]
    first = load_config(topo, inv, clock[0])
    live = LiveConfig(first, lambda: clock[0])
    applied: list[tuple[int, frozenset[str]]] = []

    async def apply(site: SiteConfig, retired: frozenset[str]) -> None:
        applied.append((site.generation, retired))

    live.on_reload(apply)
    digest_1 = first.digest_of("pio", "pio-1")
    assert digest_1 == first.plan("pio", "pio-1").plan_digest  # type: ignore[union-attr]
    assert not live.changed()

    inv.write_text(inventory(["pio-1", "pio-3"], ["vc-1"]))
    assert live.changed()
    assert await live.reload("test")
    second = live.current
    assert second.generation > first.generation and live.error is None
    assert applied == [(second.generation, first.check_ids - second.check_ids)]
    assert all("pio-2" in i for i in live.retired)
    assert second.digest_of("pio", "pio-1") != digest_1  # pio-1 now probes pio-3
    assert second.digest_of("pio", "pio-2") == ""  # no longer a host of the site
    assert second.scopes[("pio", "pio-1")].check_ids >= first.scopes[("pio", "pio-1")].check_ids

    bad = inventory(["pio-1", "pio-3"], ["vc-1"], duplicate="pio-3")
    inv.write_text(bad)
    clock[0] += 10
    assert live.changed()
    assert not await live.reload("test")
    assert live.current is second and live.failures == 1 and not live.last_ok
    assert live.error is not None
    assert (live.error.file, live.error.line) == (str(inv), line_of(bad, "127.0.0.29"))
    assert live.error.at == clock[0]
    assert not live.changed()  # a refused edit is not tried again until the files change
    status = live.status.to_dict()
    assert status["error"]["line"] == live.error.line and status["digest"] == second.digest
    assert [f["path"] for f in status["files"]] == [
        str(topo),
        str(tmp_path / "matrix.yaml"),
        str(inv),
    ]
    inv.write_text(inventory(["pio-1", "pio-3"], ["vc-1"]))  # put back as it runs
    assert live.changed()
    assert await live.reload("test")
    assert live.current is second and live.error is None and live.last_ok
    assert len(applied) == 1  # nothing to apply: the files are as loaded


def test_the_report_config_block_matches_the_schema(tmp_path: Path) -> None:
    from netcheck.controller.evaluate import evaluate
    from netcheck.controller.expand import expected
    from netcheck.controller.model import Observed
    from netcheck.controller.reload import ConfigStatus, ReloadError
    from netcheck.controller.render import json_report

    topo, inv = write_site(tmp_path, ["22"], ["pio-1"])
    site = load_config(topo, inv, time.time())
    ev = evaluate(site.spec, expected(site.spec, site.inventory), Observed(), time.time())
    schema = json.loads((REPO / "controller/render/report.schema.json").read_text())
    error = ReloadError(str(inv), 7, f"{inv}:7: duplicate host name 'pio-1'", time.time())
    for status in (
        None,
        ConfigStatus(site.digest, site.loaded_at, site.files, None),
        ConfigStatus(site.digest, site.loaded_at, site.files, error),
    ):
        config = status.to_dict() if status is not None else None
        data = json.loads(json_report.render(site.spec, ev, (), config=config))
        jsonschema.validate(data, schema)
        assert data["config"] == config


async def test_a_stale_agent_fetches_its_new_plan_and_keeps_its_buffered_results(
    tmp_path: Path,
) -> None:
    """The real controller app in process, reloaded (vc-1 leaves, vc-2 comes): pio-1's
    buffered results of the old plan are delivered (stored, left out of the evaluation, not
    unexpected), the answer's digest marks its plan stale, and check_plan fetches the new
    one."""
    from aiohttp import web

    from netcheck.agent.link import HttpTransport, Link
    from netcheck.agent.wire import ProbeResult, Registration
    from netcheck.controller.app import make_app
    from netcheck.controller.appkeys import EVALUATION, LIVE, STORE

    topo, inv = write_site(tmp_path, ["22"], ["pio-1"])
    site = load_config(topo, inv, time.time())
    app = make_app(site.spec, site.inventory, tmp_path / "nc.db", "reload-token")
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    reg = Registration("pio", "pio-1", ADDR, "t", "connect")
    link = Link(HttpTransport(f"http://127.0.0.1:{port}", "reload-token"), reg)
    try:
        old = await link.register()
        to_vc = next(c for c in old.checks if c.dst_host == "vc-1")
        now = time.time()
        result = ProbeResult(
            to_vc.check_id, 2, "pio-1", ADDR, "vc-1", to_vc.dst_address, to_vc.port,
            "refused", "connect", 1, now,
        )  # fmt: skip
        inv.write_text(inventory(["pio-1"], ["vc-2"]))
        assert await app[LIVE].reload("test")
        link.add([result])
        assert link.buffered == 1 and not link.stale
        link.plan_changed.clear()
        assert await link.check_plan()  # delivered, then the new plan fetched
        assert link.buffered == 0 and not link.stale and link.plan_changed.is_set()
        assert link.plan is not None and link.plan.plan_digest != old.plan_digest
        assert link.plan.plan_digest == app[LIVE].current.digest_of("pio", "pio-1")
        assert {c.dst_host for c in link.plan.checks} == {"pio-1", "vc-2"}
        assert not await link.check_plan()  # current now: nothing to fetch
        ev = await asyncio.to_thread(app[EVALUATION].get, True)
        stored = await asyncio.to_thread(app[STORE].results)
        assert to_vc.check_id in {r.check_id for r in stored}  # stored, but retired:
        assert ev.unexpected == ()
        assert to_vc.check_id not in {r.check.spec.check_id for r in ev.rows}
        assert any(r.check.spec.dst_host == "vc-2" and r.cause == "not_tested" for r in ev.rows)
    finally:
        await link.transport.close()
        await runner.cleanup()


async def test_after_a_restart_with_an_edited_site_old_results_leave_once_the_plan_is_fetched(
    tmp_path: Path,
) -> None:
    """A controller restarted on the same database with vc-1 and pio-2 gone: pio-2's stored
    results leave at once (not a host of the site), pio-1's result for vc-1 is unexpected
    only until pio-1 fetches its new plan; a stray result newer than that stays unexpected."""
    from aiohttp.test_utils import TestClient, TestServer

    from netcheck.agent.wire import ProbeResult, Registration, ResultBatch
    from netcheck.controller.app import make_app
    from netcheck.controller.appkeys import EVALUATION

    topo, inv = write_site(tmp_path, ["22"], ["pio-1", "pio-2"])
    db, token = tmp_path / "nc.db", "restart-token"
    auth = {"Authorization": f"Bearer {token}"}
    now = time.time()

    def result(src: str, dst: str, port: int, at: float) -> ProbeResult:
        src_addr, dst_addr = PIO_ADDRESSES[src], "127.0.0.31"
        cid = f"{2 if dst.startswith('vc') else 4}:{src}>{dst}:{port}"
        return ProbeResult(cid, int(cid[0]), src, src_addr, dst, dst_addr, port, "refused",
                           "connect", 1, at)  # fmt: skip

    async def serve(at_db: Path) -> TestClient:  # type: ignore[type-arg]
        site = load_config(topo, inv, time.time())
        client = TestClient(TestServer(make_app(site.spec, site.inventory, at_db, token)))
        await client.start_server()
        return client

    async def evaluation(client: TestClient) -> Any:  # type: ignore[type-arg]
        assert client.app is not None
        return await asyncio.to_thread(client.app[EVALUATION].get, True)

    first = await serve(db)
    try:
        for host in ("pio-1", "pio-2"):
            reg = Registration("pio", host, PIO_ADDRESSES[host], "t", "connect")
            assert (await first.post("/api/v1/register", json=encode(reg), headers=auth)).ok
        old = (result("pio-1", "vc-1", 9, now - 100), result("pio-2", "vc-1", 9, now - 100))
        for r in old:
            batch = ResultBatch("pio", r.src_host, (r,))
            assert (await first.post("/api/v1/results", json=encode(batch), headers=auth)).ok
    finally:
        await first.close()
    inv.write_text(inventory(["pio-1"], ["vc-2"]))
    second = await serve(db)
    try:
        ev = await evaluation(second)
        assert [r.src_host for r in ev.unexpected] == ["pio-1"]  # pio-2's left at once
        reg = Registration("pio", "pio-1", PIO_ADDRESSES["pio-1"], "t", "connect")
        assert (await second.post("/api/v1/register", json=encode(reg), headers=auth)).ok
        assert (await evaluation(second)).unexpected == ()  # pio-1 fetched its new plan
        stray = result("pio-1", "vc-1", 10, time.time())
        batch = ResultBatch("pio", "pio-1", (stray,))
        assert (await second.post("/api/v1/results", json=encode(batch), headers=auth)).ok
        assert [r.check_id for r in (await evaluation(second)).unexpected] == [stray.check_id]
    finally:
        await second.close()
