"""Path MTU, round trip and throughput probes against real stand-in listeners on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from netcheck.agent import measure
from netcheck.agent.listeners import ListenerSet
from netcheck.agent.probes import pmtu, rtt, throughput
from netcheck.agent.wire import ListenSpec

ADDR = "127.0.0.1"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((ADDR, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
async def standins() -> AsyncIterator[tuple[ListenerSet, list[int]]]:
    ports = _free_ports(4)
    listeners = ListenerSet(ADDR, None, idle_timeout=1.0)
    statuses = await listeners.reconcile(ListenSpec(port=p, service="tcp") for p in ports)
    assert [s.state for s in statuses] == ["listening"] * 4
    try:
        yield listeners, ports
    finally:
        await listeners.close()


@pytest.mark.parametrize(
    ("head", "want"),
    [
        (b"NETCHECK-MEASURE/1 SINK\n", measure.Request("sink")),
        (b"NETCHECK-MEASURE/1 ECHO\nxyz", measure.Request("echo")),
        (b"NETCHECK-MEASURE/1 SOURCE 1000\n", measure.Request("source", 1000)),
        (b"NETCHECK-MEA", "more"),
        (b"", "more"),
        (b"GET / HTTP/1.0\r\n", "no"),
        (b"NETCHECK-MEASURE/1 SOURCE 0\n", "no"),
        (b"NETCHECK-MEASURE/1 SOURCE 99999999999999\n", "no"),
        (b"NETCHECK-MEASURE/1 SOURCE -5\n", "no"),
        (b"NETCHECK-MEASURE/1 DELETE\n", "no"),
        (b"NETCHECK-MEASURE/1 " + b"A" * 60, "no"),
    ],
)
def test_request_line_is_parsed_strictly(head: bytes, want: object) -> None:
    assert measure.classify(head) == want


async def test_sink_counts_what_arrived_and_other_talk_still_hangs_up(
    standins: tuple[ListenerSet, list[int]],
) -> None:
    _, ports = standins
    reader, writer = await asyncio.open_connection(ADDR, ports[0])
    writer.write(measure.request_line("sink") + b"x" * 100_000)
    writer.write_eof()
    assert await asyncio.wait_for(reader.readline(), 5) == b"GOT 100000\n"
    writer.close()
    # not a measurement: the ordinary stand-in conversation (read a little, hang up)
    reader, writer = await asyncio.open_connection(ADDR, ports[0])
    writer.write(b"hello\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_the_caps_count_measurement_sessions_and_give_them_back(
    standins: tuple[ListenerSet, list[int]],
) -> None:
    listeners, ports = standins
    reader, writer = await asyncio.open_connection(ADDR, ports[1])
    writer.write(measure.request_line("echo") + b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    assert listeners.open_connections == 1
    writer.close()
    for _ in range(100):
        if listeners.open_connections == 0:
            break
        await asyncio.sleep(0.02)
    assert listeners.open_connections == 0


async def test_echo_is_bounded(standins: tuple[ListenerSet, list[int]]) -> None:
    _, ports = standins
    reader, writer = await asyncio.open_connection(ADDR, ports[1])
    writer.write(measure.request_line("echo"))
    total = 0
    chunk = b"e" * 65536
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        for _ in range(measure.MAX_ECHO_BYTES // len(chunk) + 4):
            writer.write(chunk)
            await writer.drain()
            total += len(await asyncio.wait_for(reader.readexactly(len(chunk)), 5))
    assert total <= measure.MAX_ECHO_BYTES
    writer.close()


async def test_path_mtu_on_loopback_is_the_route_mtu(
    standins: tuple[ListenerSet, list[int]],
) -> None:
    _, ports = standins
    got = await pmtu.probe(ADDR, ports[2], timeout_s=2.0)
    with socket.socket() as s:
        s.connect((ADDR, ports[2]))
        route = s.getsockopt(socket.IPPROTO_IP, pmtu.IP_MTU)
    assert got.error == ""
    assert got.route_mtu == route
    # full-size segments passed at once: the largest packet TCP sent (on loopback the kernel
    # cuts segments to half the peer's window, below the 65,535 route MTU)
    assert got.mtu is not None and 1500 < got.mtu <= route
    assert got.icmp is None and not got.black_hole and got.probes == 1


async def test_path_mtu_with_nothing_listening_says_why() -> None:
    (port,) = _free_ports(1)
    got = await pmtu.probe(ADDR, port, timeout_s=1.0)
    assert got.mtu is None and "connect" in got.error and "refused" in got.error.lower()


async def test_round_trip_series(standins: tuple[ListenerSet, list[int]]) -> None:
    _, ports = standins
    s = await rtt.measure_series(ADDR, ports[3], count=5)
    assert s.sent == 5 and s.answered == 5 and s.loss == 0.0
    assert s.rtt_min_s is not None and s.rtt_max_s is not None and s.jitter_s is not None
    assert 0 < s.rtt_min_s <= s.rtt_max_s < 1.0
    (closed,) = _free_ports(1)
    lost = await rtt.measure_series(ADDR, closed, count=3)
    assert lost.answered == 0 and lost.loss == 1.0 and lost.rtt_avg_s is None
    assert "refused" in lost.error.lower()


def test_jitter_is_the_mean_step() -> None:
    s = rtt.Series("x", 1, 4, (0.010, 0.014, 0.012, 0.012))
    assert s.jitter_s == pytest.approx((0.004 + 0.002 + 0.0) / 3)
    assert s.loss == 0.0
    assert rtt.Series("x", 1, 4, (0.01,)).loss == 0.75


async def test_throughput_both_directions_over_several_ports(
    standins: tuple[ListenerSet, list[int]],
) -> None:
    _, ports = standins
    up = await throughput.measure_throughput(ADDR, ports, "up", bytes_per_stream=8 << 20)
    assert up.errors == ()
    assert [s.nbytes for s in up.streams] == [8 << 20] * 4
    assert up.mbit_s > 0
    down = await throughput.measure_throughput(ADDR, ports[:2], "down", bytes_per_stream=4 << 20)
    assert down.errors == () and down.nbytes == 8 << 20 and down.mbit_s > 0
    # bounded in time: a byte budget far beyond what 0.3 s carries stops at the deadline
    short = await throughput.measure_throughput(
        ADDR, ports[:1], "up", bytes_per_stream=measure.MAX_SINK_BYTES, seconds=0.3
    )
    assert short.errors == () and 0 < short.nbytes < measure.MAX_SINK_BYTES
    assert short.seconds < 10


async def test_throughput_to_a_port_without_a_standin_is_an_error() -> None:
    (port,) = _free_ports(1)
    got = await throughput.measure_throughput(ADDR, [port], "up", bytes_per_stream=1000)
    assert got.nbytes == 0 and len(got.errors) == 1 and "connect" in got.errors[0]
