"""The controller link against a real aiohttp test controller on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from netcheck.agent.link import HttpTransport, Link, LinkError
from netcheck.agent.wire import (
    CheckSpec,
    ListenSpec,
    Plan,
    ProbeResult,
    Registration,
    ResultBatch,
    decode,
    encode,
)

REPO = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-enrolment-token"
AGENT_ADDR = "127.0.0.11"


def free_port(addr: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


class Controller:
    """A real HTTP server implementing the register/results contract."""

    def __init__(self, plan: Plan, by_host: dict[str, Plan] | None = None) -> None:
        self.plan = plan
        self.by_host = by_host or {}
        self.registrations: list[Registration] = []
        self.batches: list[ResultBatch] = []
        self.known = True
        self.reject_next = 0
        self.runner: web.AppRunner | None = None
        self.port = free_port()

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def register(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "bad token"}, status=401)
        reg = decode(Registration, await request.json())
        self.registrations.append(reg)
        self.known = True
        return web.json_response(encode(self.by_host.get(reg.host, self.plan)))

    async def results(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "bad token"}, status=401)
        if not self.known:
            return web.json_response({"error": "unknown agent"}, status=409)
        batch = decode(ResultBatch, await request.json())
        if self.reject_next:
            self.reject_next -= 1
            return web.json_response({"error": "bad batch"}, status=400)
        self.batches.append(batch)
        return web.json_response({"accepted": len(batch.results)})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/v1/register", self.register)
        app.router.add_post("/api/v1/results", self.results)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def results_received(self) -> list[ProbeResult]:
        return [r for b in self.batches for r in b.results]


def result(i: int) -> ProbeResult:
    return ProbeResult(
        check_id=f"1:a>b:{i}",
        interaction=1,
        src_host="a",
        src_address="127.0.0.1",
        dst_host="b",
        dst_address="127.0.0.2",
        port=i,
        state="open",
        mode="connect",
        attempts=1,
        started_at=float(i),
    )


EMPTY_PLAN = Plan(role="pio", host="pio-1", address=AGENT_ADDR, listen=(), checks=())
REG = Registration(role="pio", host="pio-1", address=AGENT_ADDR, version="t", mode="connect")


@pytest.fixture
async def controller() -> AsyncIterator[Controller]:
    ctl = Controller(EMPTY_PLAN)
    try:
        yield ctl
    finally:
        await ctl.stop()


async def test_buffers_while_controller_is_down_then_delivers(controller: Controller) -> None:
    link = Link(
        HttpTransport(controller.url, TOKEN, timeout_s=2), REG, buffer_size=100, batch_size=40
    )
    try:
        with pytest.raises(LinkError):
            await link.register()
        link.add(result(i) for i in range(70))
        with pytest.raises(LinkError):
            await link.flush()
        link.add(result(i) for i in range(70, 130))  # 30 beyond the bound: oldest dropped
        assert link.buffered == 100
        assert link.dropped_total == 30
        await controller.start()
        await link.register()
        await link.flush()
    finally:
        await link.transport.close()
    got = controller.results_received()
    assert [r.port for r in got] == list(range(30, 130))
    assert sum(b.dropped for b in controller.batches) == 30
    assert len(controller.batches) == 3
    assert link.buffered == 0 and link.last_report is not None


async def test_unknown_agent_reregisters_and_bad_batch_is_dropped(controller: Controller) -> None:
    await controller.start()
    link = Link(HttpTransport(controller.url, TOKEN), REG, batch_size=10)
    try:
        await link.register()
        controller.known = False
        link.add(result(i) for i in range(5))
        await link.flush()
        assert len(controller.registrations) == 2
        assert [r.port for r in controller.results_received()] == list(range(5))
        controller.reject_next = 1
        link.add(result(i) for i in range(5, 25))
        await link.flush()
    finally:
        await link.transport.close()
    assert link.rejected_batches == 1
    assert [r.port for r in controller.results_received()] == [*range(5), *range(15, 25)]


async def test_bad_token_is_an_error_and_keeps_results(controller: Controller) -> None:
    await controller.start()
    link = Link(HttpTransport(controller.url, "wrong"), REG)
    try:
        with pytest.raises(LinkError, match="401"):
            await link.register()
        link.add([result(1)])
        with pytest.raises(LinkError, match="401"):
            await link.flush()
        assert link.buffered == 1
        assert "wrong" not in repr(link.transport)
    finally:
        await link.transport.close()


def agent_plan() -> tuple[Plan, list[int]]:
    ports = [free_port(AGENT_ADDR) for _ in range(3)]
    listen = (ListenSpec(port=ports[0], service="ssh"), ListenSpec(port=ports[1], service="tls"))
    checks = tuple(
        CheckSpec(
            check_id=f"4:pio-1>pio-1:{p}",
            interaction=4,
            dst_role="pio",
            dst_host="pio-1",
            dst_address=AGENT_ADDR,
            port=p,
            service=svc,
        )
        for p, svc in zip(ports, ("ssh", "tls", "tcp"), strict=True)
    )
    plan = Plan(
        role="pio", host="pio-1", address=AGENT_ADDR, listen=listen, checks=checks, timeout_s=1.0
    )
    return plan, ports


async def spawn_agent(
    ctl: Controller, tmp_path: Path, *extra: str, host: str = "pio-1", address: str = AGENT_ADDR
) -> asyncio.subprocess.Process:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "netcheck.agent", "serve", "--controller", ctl.url),
        *("--token-file", str(token_file), "--role", "pio", "--host", host),
        *("--address", address, "--mode", "connect", *extra),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_serve_once_registers_probes_and_reports(tmp_path: Path) -> None:
    plan, ports = agent_plan()
    ctl = Controller(plan)
    await ctl.start()
    try:
        proc = await spawn_agent(ctl, tmp_path, "--once")
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await ctl.stop()
    assert proc.returncode == 0, err.decode()
    assert TOKEN not in err.decode()
    assert ctl.registrations[0].role == "pio" and ctl.registrations[0].mode == "connect"
    states = {r.port: r.state for r in ctl.results_received()}
    assert states == {ports[0]: "open", ports[1]: "open", ports[2]: "refused"}
    # The final batch says the ports are no longer held, and since when.
    final = {s.port: s for s in ctl.batches[-1].listeners}
    assert {p: s.state for p, s in final.items()} == {ports[0]: "closed", ports[1]: "closed"}
    last_probe = max(r.started_at for r in ctl.results_received())
    assert all(last_probe <= s.since <= ctl.batches[-1].sent_at for s in final.values())


async def test_serve_once_linger_keeps_listeners_for_late_peers(tmp_path: Path) -> None:
    plan, ports = agent_plan()
    ctl = Controller(plan)
    await ctl.start()
    try:
        proc = await spawn_agent(ctl, tmp_path, "--once", "--linger", "1.5")
        for _ in range(200):  # the round is reported before the linger
            if ctl.batches:
                break
            await asyncio.sleep(0.05)
        assert ctl.results_received(), "the round was not reported before lingering"
        reported = asyncio.get_running_loop().time()
        assert proc.returncode is None
        # A peer that probes after the agent's own round still reaches its listener.
        _, writer = await asyncio.open_connection(AGENT_ADDR, ports[0])
        writer.close()
        await writer.wait_closed()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        loop_time = asyncio.get_running_loop().time()
    finally:
        await ctl.stop()
    assert proc.returncode == 0, err.decode()
    assert loop_time - reported > 1.0  # it stayed up for the linger
    first, final = ctl.batches[0], ctl.batches[-1]
    assert {s.state for s in first.listeners} == {"listening"}
    assert {s.state for s in final.listeners} == {"closed"}
    assert min(s.since for s in final.listeners) >= first.sent_at + 1.4
    assert ports[0] in {p.port for b in ctl.batches[1:] for p in b.peers}


PEER_ADDR = "127.0.0.12"


def pair_plans() -> dict[str, Plan]:
    """Two agents, each listening on one port and probing the other's."""
    addrs = {"pio-1": AGENT_ADDR, "pio-2": PEER_ADDR}
    ports = {h: free_port(a) for h, a in addrs.items()}
    plans = {}
    for host, peer in (("pio-1", "pio-2"), ("pio-2", "pio-1")):
        check = CheckSpec(
            check_id=f"4:{host}>{peer}:{ports[peer]}",
            interaction=4,
            dst_role="pio",
            dst_host=peer,
            dst_address=addrs[peer],
            port=ports[peer],
            service="tcp",
        )
        plans[host] = Plan(
            role="pio",
            host=host,
            address=addrs[host],
            listen=(ListenSpec(port=ports[host], service="tcp"),),
            checks=(check,),
            timeout_s=1.0,
        )
    return plans


@pytest.mark.parametrize("settle", [0.0, 2.0])
async def test_serve_once_settle_lets_agents_started_apart_see_each_other(
    tmp_path: Path, settle: float
) -> None:
    """pio-2 starts 1 s after pio-1. Without --settle, pio-1 probes pio-2 before its listener
    is up (a reset); with --settle 2 both find each other's listener, and each reported its
    listener states before probing."""
    plans = pair_plans()
    ctl = Controller(plans["pio-1"], plans)
    await ctl.start()
    procs = []
    try:
        args = ("--once", "--settle", str(settle), "--linger", "3")
        procs.append(await spawn_agent(ctl, tmp_path, *args))
        await asyncio.sleep(1.0)
        procs.append(await spawn_agent(ctl, tmp_path, *args, host="pio-2", address=PEER_ADDR))
        outs = [await asyncio.wait_for(p.communicate(), 30) for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        await ctl.stop()
    assert [p.returncode for p in procs] == [0, 0], [e.decode() for _, e in outs]
    states = {(b.host, r.dst_host): r.state for b in ctl.batches for r in b.results}
    if not settle:
        assert states == {("pio-1", "pio-2"): "refused", ("pio-2", "pio-1"): "open"}
        return
    assert states == {("pio-1", "pio-2"): "open", ("pio-2", "pio-1"): "open"}
    for host in plans:
        batches = [b for b in ctl.batches if b.host == host]
        first = batches[0]
        assert not first.results and [s.state for s in first.listeners] == ["listening"]
        started = min(r.started_at for b in batches for r in b.results)
        assert first.sent_at < started
        assert started - first.listeners[0].since >= settle - 0.05


async def test_settle_and_linger_need_once(tmp_path: Path) -> None:
    ctl = Controller(EMPTY_PLAN)
    proc = await spawn_agent(ctl, tmp_path, "--settle", "1")
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and "need --once" in err.decode()


async def test_serve_health_metrics_and_sigterm_flush(tmp_path: Path) -> None:
    plan, ports = agent_plan()
    plan = Plan(**{**plan.__dict__, "period_s": 0.5})
    ctl = Controller(plan)
    await ctl.start()
    health_port = free_port()
    proc = await spawn_agent(ctl, tmp_path, "--health-listen", f"127.0.0.1:{health_port}")
    try:
        metrics = ""
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                await asyncio.sleep(0.1)
                if len(ctl.batches) >= 2:
                    break
            async with session.get(f"http://127.0.0.1:{health_port}/healthz") as resp:
                health: dict[str, Any] = await resp.json()
            async with session.get(f"http://127.0.0.1:{health_port}/metrics") as resp:
                metrics = await resp.text()
        assert health["status"] == "ok" and health["registered"] is True
        assert 'netcheck_agent_probes_total{state="open"}' in metrics
        assert 'netcheck_agent_listeners{state="listening"} 2.0' in metrics
        assert "netcheck_agent_last_report_timestamp_seconds" in metrics
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await ctl.stop()
    assert proc.returncode == 0, err.decode()
    assert len(ctl.batches) >= 2
    assert {s.state for s in ctl.batches[-2].listeners} == {"listening"}
    assert {s.port: s.state for s in ctl.batches[-1].listeners} == {
        ports[0]: "closed",
        ports[1]: "closed",
    }
    # Listeners were closed at shutdown: nothing holds the port any more.
    with socket.socket() as s:
        s.bind((AGENT_ADDR, ports[0]))
    assert json.dumps(encode(ctl.batches[-1]))
