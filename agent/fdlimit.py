"""Open-file budget for probes: raise RLIMIT_NOFILE, and cap concurrency to what fits.

A connect probe holds up to ``attempts`` sockets at once (its staggered SYNs); connect
mode's traceroutes draw on a fixed pool of their own (:func:`fd_budget`), not on every probe.
With more probes in flight than descriptors, sockets fail with EMFILE and ports end ``error``
instead of their real state; capping the concurrency makes a big plan slower, never wrong.
"""

from __future__ import annotations

import functools
import logging
import resource

log = logging.getLogger(__name__)


def raise_nofile_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE to %d: %s", target, exc)
    return soft


def fd_reserve(soft: int) -> int:
    """Descriptors kept for everything but probes: listeners, their connections, the link."""
    return max(32, min(1024, soft // 4))


def fd_capped_concurrency(concurrency: int, attempts: int) -> int:
    """`concurrency`, lowered so that every probe's staggered sockets fit RLIMIT_NOFILE."""
    return fd_budget(concurrency, attempts, 0, 1)[0]


def fd_budget(concurrency: int, attempts: int, pool: int, per_slot: int) -> tuple[int, int]:
    """(concurrency, pool slots) that fit RLIMIT_NOFILE: `concurrency` probes of `attempts`
    sockets each, and a pool shared by all of them of up to `pool` slots of `per_slot`
    sockets each (connect mode's traceroutes).

    The soft limit is raised first (up to the hard limit); of what is left after a reserve
    for listeners and the controller link, the pool gets what it asks for up to a quarter
    (one slot at least), and the rest is divided by the sockets one probe may hold at once.
    """
    wanted = max(1, concurrency)
    per_probe = max(1, attempts)
    per_slot = max(1, per_slot)
    reserve = fd_reserve(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    soft = raise_nofile_limit(wanted * per_probe + pool * per_slot + max(reserve, 1024))
    free = soft - fd_reserve(soft)
    slots = min(max(0, pool), max(1, free // 4 // per_slot))
    budget = max(1, (free - slots * per_slot) // per_probe)
    if budget < wanted:
        _log_cap(wanted, budget, soft, per_probe, slots * per_slot)
        return budget, slots
    return wanted, slots


@functools.cache
def _log_cap(wanted: int, cap: int, soft: int, per_probe: int, pooled: int) -> None:
    log.warning(
        "probe concurrency %d capped at %d: RLIMIT_NOFILE is %d (the hard limit) and each "
        "probe may hold %d sockets%s; raise the hard limit (LimitNOFILE=, ulimit -Hn) for more",
        wanted,
        cap,
        soft,
        per_probe,
        f", besides a pool of {pooled} traceroute sockets" if pooled else "",
    )
