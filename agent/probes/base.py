"""The probe contract: how to probe (:class:`ProbeOptions`), what a probe found
(:class:`Outcome`), and the round signature every probe kind implements (:data:`Runner`).

A result on the wire is the check, the options and the outcome put together
(:func:`make_result`); probes build an :class:`Outcome` and never a
:class:`~netcheck.agent.wire.ProbeResult` field by field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence

from netcheck.agent.probes.rtt import RoundTrips
from netcheck.agent.wire import CheckSpec, ProbeMode, ProbeResult, ProbeState, ServiceCheck


@dataclasses.dataclass(frozen=True)
class ProbeOptions:
    """How to probe: the caller owns the timeout (per check, all attempts and the protocol
    check included)."""

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


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a probe found for one check."""

    state: ProbeState
    attempts: int
    latency_s: float | None = None
    service_check: ServiceCheck | None = None
    # The last router that answered a TCP traceroute on the port, and its hop number.
    last_hop: str | None = None
    # Where the ICMP error or the reset came from, when that is known, and how many hops away.
    responder: str | None = None
    rst_from_firewall: bool | None = None
    error: str = ""
    last_hop_hops: int | None = None
    responder_hops: int | None = None


def make_result(
    check: CheckSpec, opts: ProbeOptions, mode: ProbeMode, started_at: float, found: Outcome
) -> ProbeResult:
    """The wire result: which check (`check`), from where (`opts`), how, and what was found."""
    return ProbeResult(
        check_id=check.check_id,
        interaction=check.interaction,
        src_host=opts.src_host,
        src_address=opts.src_address,
        dst_host=check.dst_host,
        dst_address=check.dst_address,
        port=check.port,
        mode=mode,
        started_at=started_at,
        state=found.state,
        attempts=found.attempts,
        latency_s=found.latency_s,
        service_check=found.service_check,
        last_hop=found.last_hop,
        responder=found.responder,
        rst_from_firewall=found.rst_from_firewall,
        error=found.error,
        last_hop_hops=found.last_hop_hops if found.last_hop is not None else None,
        responder_hops=found.responder_hops if found.responder is not None else None,
    )


# One probe round: every check of `checks`, at most `concurrency` at once, results in input
# order. Every probe kind's module has one, named ``run``.
Runner = Callable[[Sequence[CheckSpec], ProbeOptions, int], Awaitable[list[ProbeResult]]]
