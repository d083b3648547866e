"""The agent's exposure sweep (agent/probes/exposure.py) and request queue (agent/requests.py)
on real loopback sockets: connect mode always, SYN mode as root."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

import pytest

from netcheck.agent import requests
from netcheck.agent.probes.exposure import SweepOptions, printable, sweep, targets_of
from netcheck.agent.wire import AgentRequest, CheckSpec, Plan, RequestParam, RequestReport

ADDR = "127.0.0.1"
BANNER = b"SSH-2.0-OpenSSH_9.2 test\r\n"


def _listener(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.bind((ADDR, port))
    s.listen(64)
    s.setblocking(False)
    return s


def _neighbours(count: int) -> list[socket.socket]:
    """`count` listeners on consecutive ports below the ephemeral range (a narrow window to
    sweep: a wide one on a busy machine only costs time)."""
    import random

    for _ in range(100):
        base = random.randrange(20_000, 30_000)
        got: list[socket.socket] = []
        try:
            for i in range(count):
                got.append(_listener(base + 2 * i))
            return got
        except OSError:
            for s in got:
                s.close()
    raise AssertionError("no free consecutive ports")


@contextlib.asynccontextmanager
async def speaking(sock: socket.socket, first: bytes) -> AsyncIterator[None]:
    """Accept on `sock`, say `first`, close: until the block ends."""
    loop = asyncio.get_running_loop()

    async def serve() -> None:
        while True:
            conn, _ = await loop.sock_accept(sock)
            with conn:
                if first:
                    await loop.sock_sendall(conn, first)

    task = asyncio.create_task(serve())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _plan(planned: int) -> Plan:
    check = CheckSpec(f"1:me>peer:{planned}", 1, "mgr", "peer", ADDR, planned, "tcp")
    return Plan("pio", "me", ADDR, (), (check,))


def _window(*ports: int) -> tuple[int, int]:
    return max(1, min(ports) - 50), min(65535, max(ports) + 50)


@pytest.mark.parametrize("mode", ["connect", "syn"])
async def test_sweep_finds_open_ports_with_banners(mode: str) -> None:
    if mode == "syn" and os.geteuid() != 0:
        pytest.skip("SYN mode needs CAP_NET_RAW (root)")
    talker, planned, quiet, closed = _neighbours(4)
    gone = int(closed.getsockname()[1])
    closed.close()  # bound once, nothing listens there now
    ports = [int(s.getsockname()[1]) for s in (talker, planned, quiet)]
    lo, hi = _window(*ports, gone)
    opts = SweepOptions(first_port=lo, last_port=hi, rate=50_000, timeout_s=0.3, retries=1)
    try:
        async with speaking(talker, BANNER), speaking(planned, BANNER), speaking(quiet, b""):
            swept, found = await sweep(_plan(ports[1]), opts, mode, 30.0)  # type: ignore[arg-type]
    finally:
        for s in (talker, planned, quiet):
            s.close()
    assert len(swept) == 1
    host = swept[0]
    assert (host.dst_host, host.dst_address, host.mode) == ("peer", ADDR, mode)
    assert host.ports == hi - lo + 1 and host.complete
    by_port = {p.port: p for p in found}
    assert set(ports) <= set(by_port)
    assert gone not in by_port
    assert by_port[ports[0]].banner == "SSH-2.0-OpenSSH_9.2 test"
    assert by_port[ports[1]].banner == ""  # the plan's own port: documented, not read
    assert by_port[ports[2]].banner == ""  # says nothing first


async def test_sweep_stops_by_its_deadline() -> None:
    """A sweep with no time left sweeps nothing and says it is incomplete."""
    plan = _plan(22)
    swept, found = await sweep(plan, SweepOptions(rate=10, timeout_s=0.2), "connect", 0.3)
    assert len(swept) == 1 and not swept[0].complete
    assert found == [] or all(p.dst_address == ADDR for p in found)


def test_targets_come_from_the_plan_only() -> None:
    checks = (
        CheckSpec("1:a>b:22", 1, "mgr", "b", "198.18.5.2", 22, "ssh"),
        CheckSpec("1:a>b:443", 1, "mgr", "b", "198.18.5.2", 443, "https"),
        CheckSpec("2:a>c:902", 2, "esxi", "c", "198.18.5.3", 902, "authd"),
    )
    got = targets_of(Plan("pio", "a", "198.18.5.1", (), checks))
    assert [(t.host, t.address, sorted(t.planned)) for t in got] == [
        ("b", "198.18.5.2", [22, 443]),
        ("c", "198.18.5.3", [902]),
    ]


def test_banner_text_is_printable_and_bounded() -> None:
    assert printable(b"220 ok\x00\xff\r\n") == "220 ok\\x00\\xff"


async def test_request_queue_acknowledges_runs_once_and_refuses_expired() -> None:
    reports: list[RequestReport] = []
    queue = requests.Requests(reports.append)
    now = 1_000.0
    params = (RequestParam("first_port", 1.0), RequestParam("last_port", 2.0))
    live = AgentRequest("r1", "exposure", "pio", "me", now + 600, params)
    late = AgentRequest("r2", "exposure", "pio", "me", now - 1)
    queue.offer([live, live, late], now=now)
    queue.offer([live], now=now)  # handed over again: not run twice
    assert [(r.id, r.state) for r in reports] == [("r1", "running"), ("r2", "failed")]
    assert "deadline" in reports[1].detail


def test_syn_template_matches_the_packet_builder() -> None:
    from netcheck.agent.probes import packets
    from netcheck.agent.probes.exposure import SynTemplate

    t = SynTemplate("198.18.1.2", "198.18.3.2", 40000, 0xDEADBEEF)
    for port in range(1, 65536):  # every port: the checksum folds the same way for all
        want = packets.tcp_segment("198.18.1.2", "198.18.3.2", 40000, port, 0xDEADBEEF, "S")
        assert bytes(t.at(port)) == want, port
