"""Probes: one module per kind, one round signature, and a registry of them.

Every probe kind has ``async def run(checks, opts, concurrency) -> list[ProbeResult]`` (the
:data:`~netcheck.agent.probes.base.Runner` type): every check of one round, at most
`concurrency` at once, results in input order. :data:`RUNNERS` maps a probe mode's name to
its runner; the agent's runner looks the mode up there.

- :mod:`.connect`: full TCP handshakes, no privilege needed;
- :mod:`.syn`: half-open SYN probes over raw sockets (CAP_NET_RAW), with a TCP
  traceroute (:mod:`.traceroute`) on the ports that are not open;
- :mod:`.service`: the protocol check on an open connection (:data:`SERVICE_CHECKS`).

A probe returns what happened as data; it never raises for a network outcome. The caller owns
the timeout: a check, protocol check included, is done within ``opts.timeout_s``.
"""

from __future__ import annotations

from collections.abc import Mapping

from netcheck.agent.probes import connect, syn
from netcheck.agent.probes.base import Outcome, ProbeOptions, Runner, make_result
from netcheck.agent.probes.service import SERVICE_CHECKS
from netcheck.agent.wire import ProbeMode

RUNNERS: Mapping[ProbeMode, Runner] = {
    "connect": connect.run,
    "syn": syn.run,
}

__all__ = ["RUNNERS", "SERVICE_CHECKS", "Outcome", "ProbeOptions", "Runner", "make_result"]
