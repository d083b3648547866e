"""Adaptive give-up time: the round-trip book, and silent ports on real sockets (no root).

The routed cases (a dropped port behind a router, a slow WAN path) are in
test_agent_adaptive_netns.py.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
from agent_helpers import full_backlog_listener

from netcheck.agent.probes import ProbeOptions, connect
from netcheck.agent.probes.rtt import RoundTrips
from netcheck.agent.wire import CheckSpec

ADDR = "127.0.0.11"
OTHER = "127.0.0.12"  # another host, of another role


def test_window_uses_the_same_host_then_the_role_then_the_round_then_the_limit() -> None:
    book = RoundTrips(factor=10, floor_s=0.5, limit_s=2.0)
    assert book.window("198.18.0.1", "esxi").seconds == 2.0
    assert book.window("198.18.0.1", "esxi").rtt_s is None
    book.add("198.18.0.7", "pio", 0.09)  # another role: the round's largest, 10 x 90 ms
    w = book.window("198.18.0.1", "esxi")
    assert w.seconds == pytest.approx(0.9) and (w.rtt_from, w.scope) == ("198.18.0.7", "round")
    book.add("198.18.0.2", "esxi", 0.08)  # another ESXi host: 10 x 80 ms
    w = book.window("198.18.0.1", "esxi")
    assert w.seconds == pytest.approx(0.8) and (w.rtt_from, w.scope) == ("198.18.0.2", "role")
    book.add("198.18.0.1", "esxi", 0.001)  # its own answer wins, raised to the floor
    w = book.window("198.18.0.1", "esxi")
    assert (w.seconds, w.rtt_from, w.scope) == (0.5, "198.18.0.1", "host")
    book.add("198.18.0.1", "esxi", 0.0005)  # a smaller sample does not shrink the largest
    assert book.window("198.18.0.1", "esxi").rtt_s == 0.001
    book.add("198.18.0.3", "vcenter", 1.0)  # 10 s, cut to the limit; other roles keep theirs
    assert book.window("198.18.0.3", "vcenter").seconds == 2.0
    assert book.window("198.18.0.4", "esxi").seconds == pytest.approx(0.8)
    # A role with no sample now borrows the round's largest (1 s -> cut to the 2 s limit).
    w = book.window("198.18.0.9", "cloud_vm")
    assert (w.seconds, w.rtt_from, w.scope) == (2.0, "198.18.0.3", "round")


def test_window_texts_say_what_was_waited_and_why() -> None:
    book = RoundTrips(factor=10, floor_s=0.5, limit_s=2.0)
    text = book.window("198.18.2.30", "esxi").describe(3, "esxi")
    assert text == (
        "no answer to 3 SYN(s) within 2.00 s (no port answered in this round, "
        "so the full limit of 2 s)"
    )
    book.add("198.18.2.30", "esxi", 0.0003)
    text = book.window("198.18.2.30", "esxi").describe(3, "esxi")
    assert text == (
        "no answer to 3 SYN(s) within 0.50 s (adaptive: 10 × the 0.3 ms round trip to "
        "198.18.2.30, raised to the 0.5 s floor; limit 2 s)"
    )
    book.add("198.18.2.31", "esxi", 0.120)
    text = book.window("198.18.2.32", "esxi").describe(3, "esxi")
    assert "within 1.20 s" in text and "120 ms round trip to 198.18.2.31 (another esxi" in text
    fresh = RoundTrips(factor=10, floor_s=0.5, limit_s=2.0)
    fresh.add("198.18.1.20", "pio", 0.0027)
    text = fresh.window("198.18.2.40", "esxi").describe(3, "esxi")
    assert text == (
        "no answer to 3 SYN(s) within 0.50 s (adaptive: 10 × the largest round trip measured "
        "in this round, 2.7 ms to 198.18.1.20; no sample from this host or role, raised to "
        "the 0.5 s floor; limit 2 s)"
    )
    fixed = RoundTrips(factor=10, floor_s=0.0, limit_s=2.0)
    fixed.add("198.18.2.30", "esxi", 0.0003)
    assert fixed.window("198.18.2.30", "esxi").describe(3) == "no answer to 3 SYN(s) within 2 s"


async def test_a_waiting_probe_is_woken_only_when_its_window_moves() -> None:
    book = RoundTrips(factor=10, floor_s=0.5, limit_s=2.0)
    own = book.changed("198.18.0.1", "esxi")
    book.add("198.18.0.2", "esxi", 0.001)  # first sample of the role: 2 s -> 0.5 s
    assert own.done()
    book.forget("198.18.0.1", "esxi", own)
    again = book.changed("198.18.0.1", "esxi")
    book.add("198.18.0.2", "esxi", 0.002)  # still the floor: nothing to wake
    assert not again.done()
    book.add("198.18.0.5", "pio", 0.15)  # another role's sample does not move a role's window
    assert not again.done()
    book.add("198.18.0.2", "esxi", 0.1)  # 1 s now
    assert again.done()
    book.forget("198.18.0.1", "esxi", again)
    pending = book.changed("198.18.0.1", "esxi")
    book.forget("198.18.0.1", "esxi", pending)
    assert pending.cancelled()


async def test_a_port_waiting_the_full_limit_wakes_on_any_sample_of_the_round() -> None:
    book = RoundTrips(factor=10, floor_s=0.5, limit_s=2.0)
    lonely = book.changed("198.18.0.9", "cloud_vm")
    book.add("198.18.0.2", "esxi", 0.001)  # another host and role: 2 s -> 0.5 s
    assert lonely.done()
    book.forget("198.18.0.9", "cloud_vm", lonely)
    again = book.changed("198.18.0.9", "cloud_vm")
    book.add("198.18.0.3", "pio", 0.003)  # a larger sample, still the floor: not woken
    assert not again.done()
    book.add("198.18.0.3", "pio", 0.12)  # 1.2 s now
    assert again.done()
    book.forget("198.18.0.9", "cloud_vm", again)
    # Once its role has a sample, the round's largest no longer moves it.
    book.add("198.18.0.8", "cloud_vm", 0.001)
    own_role = book.changed("198.18.0.9", "cloud_vm")
    book.add("198.18.0.3", "pio", 0.18)
    assert not own_role.done()
    book.forget("198.18.0.9", "cloud_vm", own_role)


def _check(port: int, addr: str = ADDR, role: str = "b") -> CheckSpec:
    return CheckSpec(
        check_id=f"1:a>{role}:{port}",
        interaction=1,
        dst_role=role,
        dst_host=role,
        dst_address=addr,
        port=port,
        service="tcp",
    )


def _refused_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_and_refused() -> Iterator[tuple[int, int]]:
    """A port whose SYNs are dropped (a listener with a full backlog) and a refused one."""
    with socket.socket() as s:
        s.bind((ADDR, 0))
        refused = int(s.getsockname()[1])
    with full_backlog_listener(ADDR) as (_, silent):
        yield silent, refused


async def test_silent_port_gives_up_after_the_floor_when_its_host_answers(
    silent_and_refused: tuple[int, int],
) -> None:
    silent, refused = silent_and_refused
    opts = ProbeOptions("a", ADDR, timeout_s=2.0, retries=2, min_timeout_s=0.3, rtt_factor=10)
    t0 = time.monotonic()
    res = await connect.run([_check(silent), _check(refused)], opts, concurrency=64)
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
    res = await connect.run([_check(silent), _check(refused)], opts, concurrency=64)
    assert time.monotonic() - t0 > 0.75
    assert res[0].state == "filtered"
    assert res[0].error == "no answer to 3 SYN(s) within 0.8 s"


async def test_silent_host_borrows_the_largest_round_trip_of_the_round(
    silent_and_refused: tuple[int, int],
) -> None:
    """Nothing of the silent port's host or role answers; another role's host does."""
    silent, _ = silent_and_refused
    other = _refused_port(OTHER)
    opts = ProbeOptions("a", ADDR, timeout_s=2.0, retries=2, min_timeout_s=0.3, rtt_factor=10)
    t0 = time.monotonic()
    res = await connect.run([_check(silent), _check(other, OTHER, "c")], opts, concurrency=64)
    took = time.monotonic() - t0
    assert [r.state for r in res] == ["filtered", "refused"]
    assert res[0].attempts == 3
    assert 0.28 < took < 0.9, took
    assert "within 0.30 s (adaptive: 10 × the largest round trip measured in this round, " in (
        res[0].error
    )
    assert f" to {OTHER}; no sample from this host or role, raised to the 0.3 s floor" in (
        res[0].error
    )


async def test_a_port_waiting_the_full_timeout_wakes_when_a_late_sample_arrives(
    silent_and_refused: tuple[int, int],
) -> None:
    """The only sample of the round comes 0.4 s after the silent port started its 3 s wait:
    the port re-reads its window then and gives up at the 0.5 s floor."""
    silent, _ = silent_and_refused
    other = _refused_port(OTHER)
    opts = ProbeOptions("a", ADDR, timeout_s=3.0, retries=2, min_timeout_s=0.5, rtt_factor=10)
    book = opts.round_trips()
    t0 = time.monotonic()
    waiting = asyncio.create_task(connect.probe(_check(silent), opts, book))
    await asyncio.sleep(0.4)
    assert not waiting.done()
    late = await connect.probe(_check(other, OTHER, "c"), opts, book)
    res = await waiting
    took = time.monotonic() - t0
    assert (late.state, res.state) == ("refused", "filtered")
    assert 0.48 < took < 1.0, took  # the floor from its start, not the 3 s timeout
    assert res.attempts == 3  # the SYNs still due went out when the window shrank
    assert res.error.startswith("no answer to 3 SYN(s) within 0.50 s (adaptive: 10 × the largest")
    assert f"to {OTHER}; no sample from this host or role" in res.error


async def test_nothing_answers_in_the_round_waits_the_full_timeout(
    silent_and_refused: tuple[int, int],
) -> None:
    silent, _ = silent_and_refused
    opts = ProbeOptions("a", ADDR, timeout_s=0.9, retries=2, min_timeout_s=0.3, rtt_factor=10)
    t0 = time.monotonic()
    res = await connect.run([_check(silent)], opts, concurrency=64)
    assert time.monotonic() - t0 > 0.85
    assert res[0].state == "filtered"
    assert res[0].error == (
        "no answer to 3 SYN(s) within 0.90 s (no port answered in this round, "
        "so the full limit of 0.9 s)"
    )
