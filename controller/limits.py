"""The controller's bounds on what agents send, in one place.

- Bytes: a request body is at most :data:`MAX_BODY` (the app's ``client_max_size``; 413).
- Counts: results, listeners and peers per batch are bounded by the wire format itself
  (``agent.wire``'s Limits section, ``MAX_BATCH_*``, honoured by both decoders); the
  controller answers 413 naming the field and its limit. Every integer of the wire format is
  bounded there too, within what SQLite holds.
- Clocks: every time an agent reports (``started_at``, ``since``, ``at``, ``sent_at``) lies
  within a window around the controller's clock: at most :data:`FUTURE_SECONDS` ahead (like
  Prometheus refusing samples too far in the future) and, except a listener's ``since``
  (a listener may hold its port for months), at most :data:`PAST_SECONDS` behind. A skewed
  agent is refused 400 with its skew in the reason, counted as reason ``skew``.
  Why: the store keeps the newest result per check by ``started_at``; a time in the future
  would stay "the newest" and hide every real result after it. Inside the window, one
  future result can hide later ones for at most :data:`FUTURE_SECONDS`.
- Unexpected results (a check id no expected check has): at most :data:`UNEXPECTED_ROWS`
  rows, the oldest dropped first, and none older than :data:`UNEXPECTED_RETENTION_SECONDS`;
  each drop counted (``netcheck_unexpected_results_dropped_total``).
"""

from __future__ import annotations

from netcheck.agent.wire import (
    MAX_BATCH_LISTENERS as MAX_BATCH_LISTENERS,
)
from netcheck.agent.wire import (
    MAX_BATCH_PEERS as MAX_BATCH_PEERS,
)
from netcheck.agent.wire import (
    MAX_BATCH_RESULTS as MAX_BATCH_RESULTS,
)
from netcheck.agent.wire import ResultBatch

MAX_BODY = 8 * 1024 * 1024
FUTURE_SECONDS = 300.0
PAST_SECONDS = 30 * 86400.0
UNEXPECTED_ROWS = 5_000
UNEXPECTED_RETENTION_SECONDS = 7 * 86400.0
# How often the retention of unexpected results runs (at a commit, at most this often).
PRUNE_EVERY_SECONDS = 60.0


def skew_problem(batch: ResultBatch, now: float) -> tuple[str, float] | None:
    """The first time of the batch outside the window (where, and its skew in seconds:
    positive ahead of ``now``, negative behind), or None."""
    lo, hi = now - PAST_SECONDS, now + FUTURE_SECONDS
    if batch.sent_at and not lo <= batch.sent_at <= hi:  # 0: not given
        return "sent_at", batch.sent_at - now
    for i, r in enumerate(batch.results):
        if not lo <= r.started_at <= hi:
            return f"results[{i}].started_at", r.started_at - now
    for i, s in enumerate(batch.listeners):
        if not 0 <= s.since <= hi:
            return f"listeners[{i}].since", s.since - now
    for i, p in enumerate(batch.peers):
        if not lo <= p.at <= hi:
            return f"peers[{i}].at", p.at - now
    return None


def skew_message(where: str, skew: float) -> str:
    if skew > 0:
        return (
            f"{where} is {skew:.0f} s ahead of the controller's clock (at most "
            f"{FUTURE_SECONDS:.0f} s allowed): check the agent's clock"
        )
    return (
        f"{where} is {-skew:.0f} s behind the controller's clock (at most "
        f"{PAST_SECONDS:.0f} s allowed): check the agent's clock"
    )
