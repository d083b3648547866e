"""The controller's bounds on what agents send, in one place.

- Bytes: a request body is at most :data:`MAX_BODY` (the app's ``client_max_size``; 413).
- Counts: results, listeners and peers per batch are bounded by the wire format itself
  (``agent.wire``'s Limits section, ``MAX_BATCH_*``, honoured by both decoders); the
  controller answers 413 naming the field and its limit. Every integer of the wire format is
  bounded there too, within what SQLite holds.
- Clocks: every time an agent reports (``started_at``, ``since``, ``at``, ``sent_at``,
  ``peers_until``) lies within a window around the controller's clock: at most
  :data:`FUTURE_SECONDS` ahead (like Prometheus refusing samples too far in the future)
  and, except a listener's ``since`` (a listener may hold its port for months), at most
  :data:`PAST_SECONDS` behind. A skewed agent is refused 400 with its skew in the reason,
  counted as reason ``skew``.
  Why: the store keeps the newest result per check by ``started_at``; a time in the future
  would stay "the newest" and hide every real result after it. Inside the window, one
  future result can hide later ones for at most :data:`FUTURE_SECONDS`.
- Unexpected results (a check id no expected check has): at most :data:`UNEXPECTED_ROWS`
  rows, the oldest dropped first, and none older than :data:`UNEXPECTED_RETENTION_SECONDS`;
  each drop counted (``netcheck_unexpected_results_dropped_total``).
- History (:mod:`controller.history`): at most :data:`HISTORY_ROWS` changes of verdict,
  state or cause in all (the oldest dropped first), at most :data:`HISTORY_ROWS_PER_CHECK` per
  check (one flapping check cannot push the others' history out), none older than
  :data:`HISTORY_RETENTION_SECONDS`; at most :data:`OUTAGE_ROWS` ended outages, none ended
  before :data:`HISTORY_RETENTION_SECONDS` ago (a current outage is never dropped: it lives in
  its check's summary). Summaries of checks no longer expected go after the same retention,
  at most :data:`HISTORY_OLD_CHECKS` of them. ``GET /api/v1/history`` answers at most
  :data:`HISTORY_LIMIT_MAX` changes and as many outages per request (:data:`HISTORY_LIMIT`
  unless ``limit`` says otherwise). About 100 bytes a change: the table stays under 100 MB.
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
HISTORY_ROWS = 1_000_000
HISTORY_ROWS_PER_CHECK = 1_000
HISTORY_RETENTION_SECONDS = 30 * 86400.0
OUTAGE_ROWS = 200_000
HISTORY_OLD_CHECKS = 200_000
HISTORY_LIMIT = 1_000
HISTORY_LIMIT_MAX = 10_000
# How often the retention of unexpected results and of history runs (at a commit, at most
# this often; history also as soon as a tenth of HISTORY_ROWS was written since).
PRUNE_EVERY_SECONDS = 60.0


def skew_problem(batch: ResultBatch, now: float) -> tuple[str, float] | None:
    """The first time of the batch outside the window (where, and its skew in seconds:
    positive ahead of ``now``, negative behind), or None."""
    lo, hi = now - PAST_SECONDS, now + FUTURE_SECONDS
    if batch.sent_at and not lo <= batch.sent_at <= hi:  # 0: not given
        return "sent_at", batch.sent_at - now
    if batch.peers_until and not lo <= batch.peers_until <= hi:
        return "peers_until", batch.peers_until - now
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
