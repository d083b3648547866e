"""Adaptive give-up time: the round-trip book, and silent ports on real sockets (no root).

The routed cases (a dropped port behind a router, a slow WAN path) are in
test_agent_adaptive_netns.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from agent.probes import ProbeOptions
from agent.probes.rtt import RoundTrips
from agent.runner import run_connect
from agent.wire import CheckSpec

ADDR = "127.0.0.11"


def test_window_uses_the_same_host_then_the_role_then_the_limit() -> None:
    book = RoundTrips(factor=10, floor_s=0.5, limit_s=2.0)
    assert book.window("10.0.0.1", "esxi").seconds == 2.0
    assert book.window("10.0.0.1", "esxi").rtt_s is None
    book.add("10.0.0.2", "esxi", 0.08)  # another ESXi host: 10 x 80 ms
    w = book.window("10.0.0.1", "esxi")
    assert (w.seconds, w.rtt_from, w.same_host) == (pytest.approx(0.8), "10.0.0.2", False)
    book.add("10.0.0.1", "esxi", 0.001)  # its own answer wins, raised to the floor
    w = book.window("10.0.0.1", "esxi")
    assert (w.seconds, w.rtt_from, w.same_host) == (0.5, "10.0.0.1", True)
    book.add("10.0.0.1", "esxi", 0.0005)  # a smaller sample does not shrink the largest
    assert book.window("10.0.0.1", "esxi").rtt_s == 0.001
    book.add("10.0.0.3", "vcenter", 1.0)  # 10 s, cut to the limit; other roles unaffected
    assert book.window("10.0.0.3", "vcenter").seconds == 2.0
    assert book.window("10.0.0.9", "pio").seconds == 2.0


def test_window_texts_say_what_was_waited_and_why() -> None:
    book = RoundTrips(factor=10, floor_s=0.5, limit_s=2.0)
    assert "full limit of 2 s" in book.window("198.18.2.30", "esxi").describe(3, "esxi")
    book.add("198.18.2.30", "esxi", 0.0003)
    text = book.window("198.18.2.30", "esxi").describe(3, "esxi")
    assert text == (
        "no answer to 3 SYN(s) within 0.50 s (adaptive: 10 × the 0.3 ms round trip to "
        "198.18.2.30, raised to the 0.5 s floor; limit 2 s)"
    )
    book.add("198.18.2.31", "esxi", 0.120)
    text = book.window("198.18.2.32", "esxi").describe(3, "esxi")
    assert "within 1.20 s" in text and "120 ms round trip to 198.18.2.31 (another esxi" in text
    fixed = RoundTrips(factor=10, floor_s=0.0, limit_s=2.0)
    fixed.add("198.18.2.30", "esxi", 0.0003)
    assert fixed.window("198.18.2.30", "esxi").describe(3) == "no answer to 3 SYN(s) within 2 s"


async def test_a_waiting_probe_is_woken_only_when_its_window_moves() -> None:
    book = RoundTrips(factor=10, floor_s=0.5, limit_s=2.0)
    own = book.changed("10.0.0.1", "esxi")
    other_role = book.changed("10.0.0.5", "pio")
    book.add("10.0.0.2", "esxi", 0.001)  # first sample of the role: 2 s -> 0.5 s
    assert own.done() and not other_role.done()
    book.forget("10.0.0.1", "esxi", own)
    again = book.changed("10.0.0.1", "esxi")
    book.add("10.0.0.2", "esxi", 0.002)  # still the floor: nothing to wake
    assert not again.done()
    book.add("10.0.0.2", "esxi", 0.1)  # 1 s now
    assert again.done()
    book.forget("10.0.0.1", "esxi", again)
    book.forget("10.0.0.5", "pio", other_role)
    assert other_role.cancelled()


def _check(port: int) -> CheckSpec:
    return CheckSpec(
        check_id=f"1:a>b:{port}",
        interaction=1,
        dst_role="b",
        dst_host="b",
        dst_address=ADDR,
        port=port,
        service="tcp",
    )


@pytest.fixture
def silent_and_refused() -> Iterator[tuple[int, int]]:
    """A port whose SYNs are dropped (a listener with a full backlog) and a refused one."""
    server = socket.socket()
    server.bind((ADDR, 0))
    server.listen(0)
    silent = int(server.getsockname()[1])
    with socket.socket() as s:
        s.bind((ADDR, 0))
        refused = int(s.getsockname()[1])
    fillers = []
    try:
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex((ADDR, silent))
            fillers.append(c)
        time.sleep(0.2)
        yield silent, refused
    finally:
        for c in fillers:
            c.close()
        server.close()


async def test_silent_port_gives_up_after_the_floor_when_its_host_answers(
    silent_and_refused: tuple[int, int],
) -> None:
    silent, refused = silent_and_refused
    opts = ProbeOptions("a", ADDR, timeout_s=2.0, retries=2, min_timeout_s=0.3, rtt_factor=10)
    t0 = time.monotonic()
    res = await run_connect([_check(silent), _check(refused)], opts, concurrency=64)
    took = time.monotonic() - t0
    assert [r.state for r in res] == ["filtered", "refused"]
    assert res[0].attempts == 3  # the retries fit in the shortened window
    assert 0.28 < took < 0.9, took
    assert "within 0.30 s (adaptive: 10 ×" in res[0].error
    assert f"round trip to {ADDR}, raised to the 0.3 s floor; limit 2 s)" in res[0].error


async def test_fixed_timeout_when_adaptation_is_off(silent_and_refused: tuple[int, int]) -> None:
    silent, refused = silent_and_refused
    opts = ProbeOptions("a", ADDR, timeout_s=0.8, retries=2, min_timeout_s=0.0)
    t0 = time.monotonic()
    res = await run_connect([_check(silent), _check(refused)], opts, concurrency=64)
    assert time.monotonic() - t0 > 0.75
    assert res[0].state == "filtered"
    assert res[0].error == "no answer to 3 SYN(s) within 0.8 s"
