"""Plans for the benchmark: the wide sweep's synthetic plan, written where a worker reads it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from netcheck.agent.wire import CheckSpec, Plan, check_id, encode
from netcheck.controller.spec import Spec

SWEEP_INTERACTION = 9  # any id: the sweep's checks are not evaluated against the spec


def sweep_plan(spec: Spec, src: str, dst: str, ports: Sequence[int], concurrency: int) -> Plan:
    """One host pair, one check per port, with the spec's probe policy (timeout, retries)."""
    checks = tuple(
        CheckSpec(
            check_id=check_id(SWEEP_INTERACTION, "ncbench-src", "ncbench-dst", p),
            interaction=SWEEP_INTERACTION,
            dst_role="bench",
            dst_host="ncbench-dst",
            dst_address=dst,
            port=p,
            service="tcp",
        )
        for p in ports
    )
    pol = spec.policy
    return Plan(
        role="bench",
        host="ncbench-src",
        address=src,
        listen=(),
        checks=checks,
        timeout_s=pol.probe_timeout_seconds,
        retries=pol.probe_retries,
        period_s=pol.probe_period_seconds,
        concurrency=concurrency,
    )


def write_plan(plan: Plan, path: Path) -> Path:
    path.write_text(json.dumps(encode(plan)))
    return path


def with_concurrency(plan: Plan, concurrency: int) -> Plan:
    return dataclasses.replace(plan, concurrency=concurrency)
