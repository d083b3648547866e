"""Run a plan's checks with the probe mode's runner (:data:`~netcheck.agent.probes.RUNNERS`),
and schedule re-runs with jitter."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator

from netcheck.agent.probes import RUNNERS, ProbeOptions
from netcheck.agent.wire import CheckSpec, Plan, ProbeMode, ProbeResult

log = logging.getLogger(__name__)


def options_for(plan: Plan, bind_address: str = "", service_checks: bool = True) -> ProbeOptions:
    return ProbeOptions(
        src_host=plan.host,
        src_address=plan.address,
        timeout_s=plan.timeout_s,
        retries=plan.retries,
        min_timeout_s=plan.min_timeout_s,
        rtt_factor=plan.rtt_factor,
        bind_address=bind_address,
        service_checks=service_checks,
    )


async def run_plan(plan: Plan, mode: ProbeMode, bind_address: str = "") -> list[ProbeResult]:
    """Every check of `plan`, by the runner registered for `mode` (``syn`` needs
    CAP_NET_RAW)."""
    opts = options_for(plan, bind_address)
    return await RUNNERS[mode](plan.checks, opts, plan.concurrency)


def diff_checks(
    old: Iterable[CheckSpec], new: Iterable[CheckSpec]
) -> tuple[tuple[CheckSpec, ...], tuple[CheckSpec, ...], tuple[CheckSpec, ...]]:
    """A new plan's checks against the old ones by id (pure): (added, removed, kept). The
    next round runs the new plan's checks; results of removed ones already buffered stay."""
    before = {c.check_id: c for c in old}
    after = {c.check_id: c for c in new}
    added = tuple(c for i, c in after.items() if i not in before)
    removed = tuple(c for i, c in before.items() if i not in after)
    kept = tuple(c for i, c in after.items() if i in before)
    return added, removed, kept


def schedule(period_s: float, rng: random.Random, first_cap_s: float = 60.0) -> Iterator[float]:
    """Delays between runs: a random first offset (capped), then the period ± 10 %."""
    yield rng.uniform(0.0, min(period_s, first_cap_s))
    while True:
        yield period_s * rng.uniform(0.9, 1.1)


def choose_mode(requested: str) -> tuple[ProbeMode, str]:
    """The probe mode to use for `requested` (auto|connect|syn), and why."""
    from netcheck.agent.caps import can_use_raw_sockets

    if requested == "connect":
        return "connect", "connect mode requested"
    if not can_use_raw_sockets():
        return "connect", "no CAP_NET_RAW: connect probes"
    return "syn", "CAP_NET_RAW available: SYN probes"
