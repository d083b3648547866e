"""The traceroute's pacing (agent.probes.traceroute.Trace), as a pure schedule: what is sent
when, given the answers so far."""

from __future__ import annotations

import itertools

from netcheck.agent.probes.traceroute import GIVE_UP, MAX_HOPS, PACE_S, RETRY_S, TRIES, Trace


def run(trace: Trace, until: float, answer: dict[int, str]) -> list[tuple[float, int]]:
    """Drive `trace` on a fake clock from 0 (see :func:`run_from`)."""
    return run_from(trace, 0.0, until, answer)


def run_from(
    trace: Trace, start: float, until: float, answer: dict[int, str], step: float = 0.01
) -> list[tuple[float, int]]:
    """Drive `trace` on a fake clock; routers in `answer` (TTL: address) answer at once."""
    sent: list[tuple[float, int]] = []
    now = start
    while now <= until:
        for ttl in trace.due(now):
            sent.append((now, ttl))
            if ttl in answer:
                trace.hops[ttl] = answer[ttl]
        now = round(now + step, 6)
    return sent


def test_one_ttl_at_a_time_and_it_stops_past_the_last_answer() -> None:
    trace = Trace()
    sent = run(trace, 0.5, {1: "r1", 2: "r2"})
    ascending = sorted({ttl for _, ttl in sent})
    assert ascending == list(range(1, 2 + GIVE_UP + 1))  # r1, r2, then GIVE_UP silent ones
    times = {ttl: min(t for t, x in sent if x == ttl) for ttl in ascending}
    assert all(times[t + 1] - times[t] >= PACE_S - 1e-9 for t in ascending[:-1])
    assert (trace.last_hop, trace.last_hop_hops) == ("r2", 2)


def test_the_silent_hop_after_the_last_answer_is_retried_until_it_answers() -> None:
    """r2 is rate-limited: silent at first, answering a second later; the trace retries TTL 2
    (spaced ever more) and, once it answers, goes on ascending from there."""
    trace = Trace()
    sent = run(trace, 0.9, {1: "r1"})
    assert [ttl for _, ttl in sent].count(2) >= 2  # retried
    sent += run_from(trace, 0.91, 3.0, {1: "r1", 2: "r2"})
    assert trace.last_hop_hops == 2
    assert max(ttl for _, ttl in sent) == 2 + GIVE_UP  # ascended again past r2
    assert [ttl for _, ttl in sent].count(2) <= TRIES


def test_the_destination_side_ends_the_trace() -> None:
    trace = Trace()
    run(trace, 0.06, {1: "r1"})
    trace.answered(2, 62)
    assert trace.due(10.0) == [] and trace.wake() is None
    assert trace.answered_at_ttl == 2


def test_retries_are_bounded_and_spaced() -> None:
    trace = Trace()
    sent = run(trace, 30.0, {})  # nothing ever answers
    ones = [t for t, ttl in sent if ttl == 1]
    assert len(ones) == TRIES
    gaps = [b - a for a, b in itertools.pairwise(ones)]
    assert all(g >= RETRY_S * (i + 1) - 1e-9 for i, g in enumerate(gaps))
    assert max(ttl for _, ttl in sent) == GIVE_UP <= MAX_HOPS
    assert trace.wake() is None and trace.last_hop is None
