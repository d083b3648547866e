"""The agent cannot be knocked over, and loses nothing it called buffered (issue 12), with real
processes and sockets on loopback: the health endpoint under 100 idle connections, stand-in
caps that hold without spending descriptors, TLS stand-ins without the eof_received warning,
the spool across ``kill -9`` (alone, and under a serving agent whose controller is down), and
SIGTERM within a few seconds while the controller is down."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from port_helpers import free_port
from test_agent_link import AGENT_ADDR, REPO, agent_site, spawn_agent

from netcheck.agent.certs import StandinCert
from netcheck.agent.errors import InputError
from netcheck.agent.health import AgentState, HealthServer
from netcheck.agent.listeners import ConnectionCaps, ListenerSet
from netcheck.agent.spool import Spool
from netcheck.agent.wire import ListenSpec, ProbeResult, decode


async def test_health_answers_under_100_idle_connections() -> None:
    server = HealthServer(AgentState(mode="connect"), request_timeout_s=30)
    await server.start("127.0.0.1", 0)
    idle = []
    try:
        for _ in range(100):
            idle.append(await asyncio.open_connection("127.0.0.1", server.port))
        for _ in range(3):  # a liveness probe, each time, answered at once
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 2)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200 OK"), answer
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["status"] == "ok"
        assert server.evicted >= 100 - 64
    finally:
        for _, w in idle:
            w.close()
        await server.close()


def _connect_many(addr: str, port: int, n: int, src: str) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind((src, 0))
        s.connect((addr, port))
        out.append(s)
    return out


async def test_standin_caps_hold_without_spending_descriptors() -> None:
    caps = ConnectionCaps(total=40, per_port=30, per_source=20)
    listeners = ListenerSet(AGENT_ADDR, None, idle_timeout=5.0, caps=caps)
    port = free_port(AGENT_ADDR)
    await listeners.reconcile([ListenSpec(port=port, service="ssh")])
    before = len(os.listdir("/proc/self/fd"))
    socks: list[socket.socket] = []
    try:
        # 300 connections from one source: 20 held, the rest accepted and closed at once.
        socks += await asyncio.to_thread(_connect_many, AGENT_ADDR, port, 300, "127.0.0.21")
        for _ in range(100):
            await asyncio.sleep(0.02)
            if sum(listeners.capped.values()) >= 280:
                break
        assert listeners.open_connections == 20 and listeners.capped == {"source": 280}
        # Our side holds 300 sockets; the agent's side only what its caps allow.
        assert len(os.listdir("/proc/self/fd")) - before <= 300 + 20 + 5
        # Another source still gets its conversation (the SSH banner).
        reader, writer = await asyncio.open_connection(
            AGENT_ADDR, port, local_addr=("127.0.0.22", 0)
        )
        assert (await asyncio.wait_for(reader.readline(), 2)).startswith(b"SSH-2.0-netcheck")
        writer.close()
        # One record per (port, source), not one per connection.
        assert sorted(p.src_address for p in listeners.take_peers()) == ["127.0.0.21", "127.0.0.22"]
    finally:
        for s in socks:
            s.close()
        await listeners.close()
    assert listeners.open_connections == 0


def _tls_burst_client(port: int) -> None:
    """Handshake, then Finished + data + close_notify + FIN in one segment: what made
    asyncio's start_tls path warn 'returning true from eof_received() has no effect'."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with socket.create_connection((AGENT_ADDR, port), timeout=3) as s:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    s.sendall(outgoing.read())
                data = s.recv(65536)
                assert data, "the stand-in closed during the handshake"
                incoming.write(data)
        tls.write(b"hello")
        with pytest.raises(ssl.SSLWantReadError):
            tls.unwrap()
        s.sendall(outgoing.read())
        s.shutdown(socket.SHUT_WR)
        s.recv(100)


async def test_tls_standin_closes_without_the_eof_received_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert = StandinCert("pio-1")
    listeners = ListenerSet(AGENT_ADDR, cert.server_context(), idle_timeout=2.0)
    port = free_port(AGENT_ADDR)
    try:
        await listeners.reconcile([ListenSpec(port=port, service="tls")])
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(5):
                await asyncio.to_thread(_tls_burst_client, port)
            await asyncio.sleep(0.2)
    finally:
        await listeners.close()
        cert.cleanup()
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()]
    assert listeners.open_connections == 0


SPOOL_WRITER = """
import sys, time
from netcheck.agent.spool import Spool
spool = Spool(sys.argv[1], 1000)
for i in range(50):
    spool.append("result", [b"r%d-%d" % (i, j) for j in range(20)])
    print(i, flush=True)  # only now do these count as buffered
time.sleep(60)
"""


def test_spool_keeps_what_it_acknowledged_across_kill_9(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SPOOL_WRITER, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acked = -1
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked == 30:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    spool = Spool(tmp_path, 1000)
    try:
        bodies = [b for _, b in spool.oldest("result", 2000)]
    finally:
        spool.close()
    want = [b"r%d-%d" % (i, j) for i in range(acked + 1) for j in range(20)]
    assert bodies[: len(want)] == want  # every acknowledged record, in order


def test_spool_bound_counts_drops_by_kind_and_keeps_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10)
    try:
        assert spool.append("result", [b"%d" % i for i in range(15)]) == 5
        assert spool.append("peer", [b"p"] * 12) == 2
        assert spool.count("result") == 10 and spool.count("peer") == 10
        with pytest.raises(InputError, match="in use by another agent"):
            Spool(tmp_path, 10)
        rows = spool.oldest("result", 3)
        assert [b for _, b in rows] == [b"5", b"6", b"7"]
        spool.delete([i for i, _ in rows], reported_dropped=5, rejected=Counter(result=3))
    finally:
        spool.close()
    again = Spool(tmp_path, 10)
    try:
        assert again.count("result") == 7 and again.dropped == {"result": 8, "peer": 2}
        assert again.unsent_dropped == 0
    finally:
        again.close()


def test_an_unreadable_spool_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "spool.sqlite").write_bytes(b"not a database at all" * 100)
    spool = Spool(tmp_path, 10)
    spool.close()
    assert [p.name.split("-")[0] for p in tmp_path.glob("spool.sqlite.corrupt-*")] == [
        "spool.sqlite.corrupt"
    ]


async def _metric(port: int, name: str) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
    text = (await asyncio.wait_for(reader.read(), 5)).decode()
    writer.close()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in {text}")


def _spooled(spool_dir: Path) -> set[tuple[str, float]]:
    spool = Spool(spool_dir, 100_000)
    try:
        rows = spool.oldest("result", 100_000)
    finally:
        spool.close()
    results = [decode(ProbeResult, json.loads(b)) for _, b in rows]
    return {(r.check_id, r.started_at) for r in results}


async def _until(what: str, check: object, limit_s: float = 20) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if callable(check) and await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_kill_9_with_a_full_buffer_loses_nothing_buffered(tmp_path: Path) -> None:
    """The controller goes away, the agent's buffer fills (20 results, oldest dropped), the
    agent is killed with SIGKILL, and starts again with the controller back: every result it
    had buffered reaches the controller."""
    ctl, _ = agent_site(tmp_path, period_s=0.3)
    spool_dir, health = tmp_path / "spool", free_port()
    args = ("--spool-dir", str(spool_dir), "--buffer", "20", "--splay", "0")
    await ctl.start()
    proc = await spawn_agent(ctl, tmp_path, *args, "--health-listen", f"127.0.0.1:{health}")
    try:
        await _until("a first batch", lambda: bool(ctl.batches))
        await ctl.stop()
        for _ in range(200):
            await asyncio.sleep(0.1)
            if await _metric(health, 'netcheck_agent_dropped_results_total{kind="result"}') > 0:
                break
        buffered = await _metric(health, "netcheck_agent_buffered_results")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        assert buffered == 20
        kept = _spooled(spool_dir)
        assert len(kept) == 20
        delivered_before = {(r.check_id, r.started_at) for r in ctl.results_received()}
        await ctl.start()
        proc = await spawn_agent(ctl, tmp_path, *args)
        received = lambda: kept <= {(r.check_id, r.started_at) for r in ctl.results_received()}  # noqa: E731
        await _until("the spooled results at the controller", received)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 15)
        await ctl.stop()
    assert not kept & delivered_before  # they were not delivered before the kill
    stored = {(r.check_id, r.started_at) for r in ctl.stored()[0]}
    latest: dict[str, float] = {}
    for check_id, at in kept:
        latest[check_id] = max(at, latest.get(check_id, 0.0))
    # The store keeps the newest result per check: each is the spooled one or a newer one.
    assert all(any(c == cid and t >= at for c, t in stored) for cid, at in latest.items())


async def test_sigterm_stops_within_seconds_while_the_controller_is_down(tmp_path: Path) -> None:
    ctl, _ = agent_site(tmp_path, period_s=0.3)
    spool_dir = tmp_path / "spool"
    await ctl.start()
    proc = await spawn_agent(ctl, tmp_path, "--spool-dir", str(spool_dir), "--splay", "0")
    try:
        await _until("a first batch", lambda: bool(ctl.batches))
        await ctl.stop()
        await asyncio.sleep(2.5)  # rounds buffer, deliveries fail and back off
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
        took = time.monotonic() - sent
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await ctl.stop()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert took < 5, f"SIGTERM took {took:.1f} s"
    assert _spooled(spool_dir), "the undelivered results should stay in the spool"
