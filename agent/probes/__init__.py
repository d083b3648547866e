"""Probes: one module per kind, one signature ``async def probe(check, opts) -> ProbeResult``.

A probe returns what happened as data; it never raises for a network outcome.
"""

from __future__ import annotations

import dataclasses

from netcheck.agent.probes.rtt import RoundTrips
from netcheck.agent.wire import CheckSpec, ProbeMode, ProbeResult, ProbeState, ServiceCheck


@dataclasses.dataclass(frozen=True)
class ProbeOptions:
    """How to probe: the caller owns the timeout (per check, all attempts included)."""

    src_host: str
    src_address: str
    timeout_s: float = 2.0
    retries: int = 2
    # Adaptive give-up time (see agent.probes.rtt): 0 keeps the fixed timeout_s.
    min_timeout_s: float = 0.0
    rtt_factor: float = 10.0
    # Source address to bind outgoing connections to ("" lets the kernel choose).
    bind_address: str = ""
    # Run the protocol check on open ports.
    service_checks: bool = True

    @property
    def attempts(self) -> int:
        return max(1, self.retries + 1)

    def round_trips(self) -> RoundTrips:
        """A fresh round-trip book for one probe round under these options."""
        return RoundTrips(self.rtt_factor, self.min_timeout_s, self.timeout_s)


def make_result(
    check: CheckSpec,
    opts: ProbeOptions,
    *,
    state: ProbeState,
    mode: ProbeMode,
    attempts: int,
    started_at: float,
    latency_s: float | None = None,
    service_check: ServiceCheck | None = None,
    last_hop: str | None = None,
    responder: str | None = None,
    rst_from_firewall: bool | None = None,
    error: str = "",
) -> ProbeResult:
    return ProbeResult(
        check_id=check.check_id,
        interaction=check.interaction,
        src_host=opts.src_host,
        src_address=opts.src_address,
        dst_host=check.dst_host,
        dst_address=check.dst_address,
        port=check.port,
        state=state,
        mode=mode,
        attempts=attempts,
        started_at=started_at,
        latency_s=latency_s,
        service_check=service_check,
        last_hop=last_hop,
        responder=responder,
        rst_from_firewall=rst_from_firewall,
        error=error,
    )
