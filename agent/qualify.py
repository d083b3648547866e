"""Qualify one data path: path MTU, round trip, loss and (when asked) throughput.

:class:`PathSpec` is what the controller asks of an agent for one host pair of a qualified
interaction (topology.yaml ``qualification:``); :class:`PathMeasurement` is what the agent
reports back. Both are wire classes, defined in :mod:`agent.wire` (unknown fields refused,
numbers bounded). :func:`measure` runs the probes of :mod:`agent.probes.pmtu`,
:mod:`agent.probes.rtt` and :mod:`agent.probes.throughput` one after the other (never two
measurements of one path at once, so they do not disturb each other), each bounded.
"""

from __future__ import annotations

import time

from netcheck.agent.probes import pmtu, rtt, throughput
from netcheck.agent.wire import MAX_PATHS, MAX_THROUGHPUT_PORTS, PathMeasurement, PathSpec

__all__ = ["MAX_PATHS", "MAX_THROUGHPUT_PORTS", "PathMeasurement", "PathSpec", "measure"]


def measure(
    spec: PathSpec,
    src_host: str,
    with_throughput: bool = False,
    bind: str = "",
    timeout_s: float = 1.0,
) -> PathMeasurement:
    """MTU and round trip of `spec`'s path, and throughput both ways when asked. Blocking."""
    at = time.time()
    m = pmtu.discover(spec.dst_address, spec.port, timeout_s=timeout_s, bind=bind)
    s = rtt.series(spec.dst_address, spec.port, spec.rtt_samples, timeout_s, bind=bind)
    errors = [e for e in (m.error and f"mtu: {m.error}", s.error and f"rtt: {s.error}") if e]
    up = down = None
    streams = 0
    if with_throughput and spec.throughput_ports:
        ports = spec.throughput_ports
        args = (spec.throughput_bytes_per_stream, spec.throughput_seconds, bind)
        t_up = throughput.run(spec.dst_address, ports, "up", *args)
        t_down = throughput.run(spec.dst_address, ports, "down", *args)
        streams = len(ports)
        up, down = t_up.mbit_s, t_down.mbit_s
        errors += [f"throughput: {e}" for e in (*t_up.errors, *t_down.errors)][:4]
    return PathMeasurement(
        interaction=spec.interaction,
        src_host=src_host,
        dst_host=spec.dst_host,
        dst_address=spec.dst_address,
        port=spec.port,
        at=at,
        mtu=m.mtu,
        route_mtu=m.route_mtu,
        icmp=m.icmp,
        black_hole=m.black_hole,
        mtu_probes=m.probes,
        rtt_avg_s=s.rtt_avg_s,
        rtt_min_s=s.rtt_min_s,
        rtt_max_s=s.rtt_max_s,
        jitter_s=s.jitter_s,
        loss=s.loss,
        rtt_samples=s.answered,
        up_mbit_s=up,
        down_mbit_s=down,
        throughput_streams=streams,
        error="; ".join(errors)[:512],
    )
