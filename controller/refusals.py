"""Refused requests, kept cheap: counted in memory, logged rate-limited, limited per source.

A refusal (401, 403, 429) costs no database write and at most one log line per source per
:data:`LOG_EVERY_S`. Each source (the peer's address) has a token bucket of
:data:`BURST` refusals, refilled at ``BURST / WINDOW_S`` per second; a source whose bucket is
empty gets 429 with ``Retry-After`` for every request, before any other work, until it
refills. Requests that are not refused cost nothing here. The counts are
``netcheck_refusals_total{reason}`` (in memory: they restart at zero with the process).

The last :data:`KEEP_REGISTRATIONS` registrations refused for their address are kept, so the
report and the page can show NAT or a misconfigured agent instead of storing it silently.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("netcheck.controller")

BURST = 20
WINDOW_S = 10.0
LOG_EVERY_S = 10.0
MAX_SOURCES = 4096
KEEP_REGISTRATIONS = 50
# Every reason a request can be refused for, so each series exists from the start.
REASONS = (
    "auth",  # no credential, a wrong one, or no client certificate
    "revoked",  # a revoked client certificate
    "unknown-host",  # a certificate for a host no longer in the inventory
    "identity",  # role/host of the request is not the certificate's
    "address",  # a registration with another address than the inventory's
    "plan",  # a result for a check outside the host's own plan
    "listener",  # a listener (or peer) state for a port the host does not hold
    "read",  # a read without the read credential
    "enrol",  # an enrolment or renewal refused (token, CSR, host)
    "rate",  # 429: too many refusals from one source
)


@dataclass(frozen=True)
class Denied(Exception):
    """A request refused before anything is stored: status, metric reason, plain words."""

    status: int
    reason: str
    message: str
    retry_after: int = 0

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class RefusedRegistration:
    at: float
    role: str
    host: str
    address: str
    expected: str
    sent_by: str


@dataclass
class _Source:
    tokens: float
    at: float
    logged_at: float = -math.inf
    quiet: int = 0  # refusals not logged since the last line


class Refusals:
    """Thread-safe; one per app."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        burst: int = BURST,
        window_s: float = WINDOW_S,
        log_every_s: float = LOG_EVERY_S,
    ) -> None:
        self._clock = clock
        self._burst, self._rate = float(burst), burst / window_s
        self._log_every = log_every_s
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.registrations: deque[RefusedRegistration] = deque(maxlen=KEEP_REGISTRATIONS)
        self.logged = 0  # log lines written (for tests)

    def _source(self, source: str, now: float) -> _Source:
        s = self._sources.get(source)
        if s is None:
            s = self._sources[source] = _Source(self._burst, now)
            while len(self._sources) > MAX_SOURCES:
                self._sources.popitem(last=False)
        else:
            s.tokens = min(self._burst, s.tokens + (now - s.at) * self._rate)
            s.at = now
            self._sources.move_to_end(source)
        return s

    def _retry_after(self, s: _Source) -> int:
        return max(1, math.ceil((1.0 - s.tokens) / self._rate))

    def limited(self, source: str) -> Denied | None:
        """A 429 for a source past its limit (counted), else None. Call before any work."""
        with self._lock:
            s = self._sources.get(source)
            if s is None:
                return None
            now = self._clock()
            s = self._source(source, now)
            if s.tokens >= 1.0:
                return None
            self.counts["rate"] += 1
            return Denied(429, "rate", "too many refused requests", self._retry_after(s))

    def refuse(self, source: str, denied: Denied, what: str) -> Denied:
        """Count a refusal of `what` (``METHOD /path``) from `source`; log it rate-limited.

        Returns the answer to give: `denied` itself, or a 429 once the source is past its limit.
        """
        with self._lock:
            now = self._clock()
            s = self._source(source, now)
            self.counts[denied.reason] += 1
            s.tokens = max(0.0, s.tokens - 1.0)
            if now - s.logged_at >= self._log_every:
                more = f" (and {s.quiet} more since the last line)" if s.quiet else ""
                log.info("refused %s from %s: %s %s%s", what, source, denied.status, denied, more)
                s.logged_at, s.quiet = now, 0
                self.logged += 1
            else:
                s.quiet += 1
            if s.tokens < 1.0 and denied.status != 429:
                return Denied(429, denied.reason, denied.message, self._retry_after(s))
            return denied

    def registration(self, refused: RefusedRegistration) -> None:
        with self._lock:
            self.registrations.append(refused)

    def snapshot(self) -> tuple[dict[str, int], list[RefusedRegistration]]:
        with self._lock:
            return dict(self.counts), list(self.registrations)
