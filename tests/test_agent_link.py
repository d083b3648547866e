"""The controller link against the real controller: netcheck.controller.app.make_app over a
real SQLite file, served by aiohttp on 127.0.0.1, with a small topology and inventory written
here. A recording middleware keeps what the agents sent (the store keeps only the newest), and
a tiny aiohttp server stands in only where the controller must misbehave (a 5xx)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from port_helpers import free_port, free_ports

from netcheck.agent.link import HttpTransport, Link, LinkError
from netcheck.agent.listeners import ListenerSet
from netcheck.agent.wire import ProbeResult, Registration, ResultBatch, check_id, decode, encode
from netcheck.controller.app import make_app
from netcheck.controller.inventory import load_inventory
from netcheck.controller.spec import load_spec
from netcheck.controller.store import Store

REPO = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-enrolment-token"
AGENT_ADDR = "127.0.0.11"
PEER_ADDR = "127.0.0.12"
VC_ADDR = "127.0.0.13"  # a host without an agent, where nothing listens

MATRIX = """\
version: 1
rows:
  - {family: RHEL, os: "RHEL 7.4", boot: UEFI, vcd_warm: "Qualified", vcs_warm: "Qualified",
     any_cold: "Qualified", static_ip_vcd_cold: "Qualified", static_ip_vcd_warm: "Qualified"}
"""


def write_site(
    tmp_path: Path,
    pio_flows: list[tuple[int, str]],
    vc_port: int | None = None,
    pio_hosts: dict[str, str] | None = None,
    period_s: float = 300,
) -> tuple[Path, Path]:
    """topology.yaml (pio -> pio on `pio_flows`, pio -> vc on `vc_port`) and an inventory."""
    flows = "".join(f'      - {{ports: "{p}", service: {svc}}}\n' for p, svc in pio_flows)
    interactions = f"""\
  - id: 4
    title: pio to pio
    source: pio
    destination: pio
    flows:
{flows}"""
    if vc_port is not None:
        interactions += f"""\
  - id: 2
    title: pio to vc
    source: pio
    destination: vc
    flows:
      - {{ports: "{vc_port}", service: tcp}}
"""
    topology = f"""\
version: 1
matrix: matrix.yaml
policy:
  probe_timeout_seconds: 1.0
  probe_min_timeout_seconds: 0
  probe_period_seconds: {period_s}
roles:
  pio: {{name: PIO, site: on_prem, agent: true}}
  vc: {{name: vCenter, site: on_prem, agent: false}}
interactions:
{interactions}modes:
  deploy:
    title: Deploy
    interactions: [{"4, 2" if vc_port is not None else "4"}]
"""
    hosts = pio_hosts or {"pio-1": AGENT_ADDR}
    pio = "".join(f"    - {{name: {h}, address: {a}}}\n" for h, a in hosts.items())
    inventory = f"""\
version: 1
site: test
hosts:
  pio:
{pio}  vc:
    - {{name: vc-1, address: {VC_ADDR}}}
"""
    (tmp_path / "matrix.yaml").write_text(MATRIX)
    (tmp_path / "topology.yaml").write_text(topology)
    (tmp_path / "inventory.yaml").write_text(inventory)
    return tmp_path / "topology.yaml", tmp_path / "inventory.yaml"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Controller:
    """The real controller app on 127.0.0.1, recording what it answered 200 to."""

    def __init__(self, tmp_path: Path, topology: Path, inventory: Path) -> None:
        self.spec = load_spec(topology)
        self.inventory = load_inventory(inventory, self.spec)
        self.tmp_path = tmp_path
        self.db = tmp_path / "netcheck.sqlite"
        self.registrations: list[Registration] = []
        self.batches: list[ResultBatch] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        resp = await handler(request)
        if resp.status == 200 and request.path == "/api/v1/register":
            self.registrations.append(decode(Registration, json.loads(body)))
        if resp.status == 200 and request.path == "/api/v1/results":
            self.batches.append(decode(ResultBatch, json.loads(body)))
        return resp

    async def start(self, db: Path | None = None) -> None:
        """Serve (again, on the same port once it has one), on `db` if given."""
        self.db = db or self.db
        app = make_app(self.spec, self.inventory, self.db, TOKEN)
        app.middlewares.append(self._record)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def results_received(self) -> list[ProbeResult]:
        return [r for b in self.batches for r in b.results]

    def stored(self) -> tuple[list[ProbeResult], dict[str, float]]:
        """What the controller's SQLite file holds: results and counters."""
        store = Store.open(self.db)
        try:
            return store.results(), store.counters()
        finally:
            store.close()


T0 = time.time() - 3600  # an hour ago: results of a recent round


def result(i: int, valid: bool = True) -> ProbeResult:
    """A result of pio-1 for port 1000 + i (`valid`: its check id matches its fields)."""
    port = 1000 + i
    return ProbeResult(
        check_id=check_id(2, "pio-1", "vc-1", port) if valid else f"bogus-{i}",
        interaction=2,
        src_host="pio-1",
        src_address=AGENT_ADDR,
        dst_host="vc-1",
        dst_address=VC_ADDR,
        port=port,
        state="open",
        mode="connect",
        attempts=1,
        started_at=T0 + i,  # within the controller's clock bounds
    )


def ports_of(results: list[ProbeResult]) -> list[int]:
    return [r.port - 1000 for r in results]


REG = Registration(role="pio", host="pio-1", address=AGENT_ADDR, version="t", mode="connect")


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    ctl = Controller(tmp_path, *write_site(tmp_path, [(free_port(AGENT_ADDR), "tcp")]))
    try:
        yield ctl
    finally:
        await ctl.stop()


async def test_buffers_while_controller_is_down_then_delivers(controller: Controller) -> None:
    await controller.start()  # to learn a port, then down
    await controller.stop()
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
    assert ports_of(controller.results_received()) == list(range(30, 130))
    assert sum(b.dropped for b in controller.batches) == 30
    assert len(controller.batches) == 3
    assert link.buffered == 0 and link.last_report is not None
    stored, counters = controller.stored()
    assert sorted(ports_of(stored)) == list(range(30, 130))
    assert counters["batches_ingested"] == 3 and counters["dropped:pio:pio-1"] == 30


async def test_unknown_agent_reregisters_and_bad_batch_is_dropped(
    controller: Controller, tmp_path: Path
) -> None:
    await controller.start()
    link = Link(HttpTransport(controller.url, TOKEN), REG, batch_size=10)
    try:
        await link.register()
        # The controller restarts on a new database: it no longer knows the agent (409).
        await controller.stop()
        await controller.start(tmp_path / "new.sqlite")
        link.add(result(i) for i in range(5))
        await link.flush()
        assert len(controller.registrations) == 2
        assert ports_of(controller.results_received()) == list(range(5))
        # A batch the controller can never take (400): dropped, counted, and the next goes on.
        link.add(result(i, valid=False) for i in range(5, 15))
        link.add(result(i) for i in range(15, 25))
        await link.flush()
    finally:
        await link.transport.close()
    assert link.rejected_batches == 1 and link.dropped_total == 10
    assert ports_of(controller.results_received()) == [*range(5), *range(15, 25)]
    stored, counters = controller.stored()
    assert sorted(ports_of(stored)) == [*range(5), *range(15, 25)]
    assert counters["rejected:schema"] == 1


async def test_each_batch_says_up_to_when_its_peers_are_complete(
    controller: Controller,
) -> None:
    """A SYN seen after a round's peers were taken travels in the very next batch, even an
    empty one between rounds, and the batch says so (peers_until); a batch that leaves older
    peers in the buffer says nothing, and the controller keeps the newest time stated."""
    await controller.start()
    listeners = ListenerSet(AGENT_ADDR, None)
    link = Link(HttpTransport(controller.url, TOKEN), REG, batch_size=2)
    link.peer_source = listeners.take_peers
    try:
        await link.register()
        link.add(peers=listeners.take_peers())  # a round's end: nothing seen yet
        listeners.saw_syn(1001, "198.18.1.40", 63)  # between rounds
        before = time.time()
        await link.check_plan()  # a batch between rounds
        first = controller.batches[-1]
        assert [(p.port, p.src_address, p.how) for p in first.peers] == [
            (1001, "198.18.1.40", "syn")
        ]
        assert before <= first.peers_until <= time.time()
        for i in range(5):  # five sources, two per batch: only the last batch is complete
            listeners.saw_syn(1002, f"198.18.1.{50 + i}", 63)
        await link.check_plan()
    finally:
        await link.transport.close()
    rest = controller.batches[controller.batches.index(first) + 1 :]
    assert [len(b.peers) for b in rest] == [2, 2, 1]
    assert [bool(b.peers_until) for b in rest] == [False, False, True]
    store = Store.open(controller.db)
    try:
        seen = store.agent("pio-1")
    finally:
        store.close()
    assert seen is not None and seen.peers_until == rest[-1].peers_until > first.peers_until


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
    assert controller.stored()[0] == []


async def test_a_server_error_keeps_the_results_for_later() -> None:
    """The one misbehaviour the real controller will not show on demand: a 5xx."""

    async def unavailable(_: web.Request) -> web.Response:
        return web.json_response({"error": "try later"}, status=503)

    app = web.Application()
    app.router.add_post("/api/v1/results", unavailable)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    link = Link(HttpTransport(f"http://127.0.0.1:{runner.addresses[0][1]}", TOKEN), REG)
    try:
        link.add(result(i) for i in range(3))
        with pytest.raises(LinkError, match="HTTP 503 try later"):
            await link.flush()
        assert link.buffered == 3 and link.dropped_total == 0 and link.pending
    finally:
        await link.transport.close()
        await runner.cleanup()


def agent_site(tmp_path: Path, period_s: float = 300) -> tuple[Controller, list[int]]:
    """pio-1 holds an ssh and a tls port and probes them, and a port of vc-1 (refused)."""
    # held together while chosen: two free_port() calls in a row can give the same port
    ports = [*free_ports(2, AGENT_ADDR), free_port(VC_ADDR)]
    site = write_site(tmp_path, [(ports[0], "ssh"), (ports[1], "tls")], ports[2], period_s=period_s)
    return Controller(tmp_path, *site), ports


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
    ctl, ports = agent_site(tmp_path)
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
    stored, _ = ctl.stored()
    assert {r.port: r.state for r in stored} == states


async def test_serve_once_with_a_refused_token_exits_1_with_the_reason(tmp_path: Path) -> None:
    """A 401 at registration is not an outage: ``--once`` ends (exit 1, the reason) at once
    instead of retrying forever; nothing is stored."""
    ctl, _ = agent_site(tmp_path)
    await ctl.start()
    try:
        (tmp_path / "bad").write_text("not-the-token\n")
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "netcheck.agent", "serve", "--controller", ctl.url),
            *("--token-file", str(tmp_path / "bad"), "--role", "pio", "--host", "pio-1"),
            *("--address", AGENT_ADDR, "--mode", "connect", "--once", "--splay", "0"),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        await ctl.stop()
    text = err.decode()
    assert proc.returncode == 1, text
    assert "registration refused: HTTP 401 missing or wrong bearer token" in text
    assert "not-the-token" not in text and "Traceback" not in text
    assert ctl.registrations == [] and ctl.stored()[0] == []


async def test_serve_once_linger_keeps_listeners_for_late_peers(tmp_path: Path) -> None:
    ctl, ports = agent_site(tmp_path)
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


@pytest.mark.parametrize("settle", [0.0, 2.0])
async def test_serve_once_settle_lets_agents_started_apart_see_each_other(
    tmp_path: Path, settle: float
) -> None:
    """pio-2 starts 1 s after pio-1; both hold the same port (on their own address) and probe
    each other. Without --settle, pio-1 probes pio-2 before its listener is up (a reset);
    with --settle 2 both find each other's listener, and each reported its listener states
    before probing."""
    port = free_port(AGENT_ADDR)
    hosts = {"pio-1": AGENT_ADDR, "pio-2": PEER_ADDR}
    ctl = Controller(tmp_path, *write_site(tmp_path, [(port, "tcp")], pio_hosts=hosts))
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
    states = {
        (b.host, r.dst_host): r.state
        for b in ctl.batches
        for r in b.results
        if r.dst_host != b.host
    }
    if not settle:
        assert states == {("pio-1", "pio-2"): "refused", ("pio-2", "pio-1"): "open"}
        return
    assert states == {("pio-1", "pio-2"): "open", ("pio-2", "pio-1"): "open"}
    for host in hosts:
        batches = [b for b in ctl.batches if b.host == host]
        first = batches[0]
        assert not first.results and [s.state for s in first.listeners] == ["listening"]
        started = min(r.started_at for b in batches for r in b.results)
        assert first.sent_at < started
        assert started - first.listeners[0].since >= settle - 0.05


async def test_settle_and_linger_need_once(tmp_path: Path) -> None:
    ctl, _ = agent_site(tmp_path)  # never started: the agent refuses before any request
    proc = await spawn_agent(ctl, tmp_path, "--settle", "1")
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and "need --once" in err.decode()


async def test_serve_health_metrics_and_sigterm_flush(tmp_path: Path) -> None:
    ctl, ports = agent_site(tmp_path, period_s=0.5)
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
