"""Qualify one data path: path MTU, round trip, loss and (when asked) throughput.

:class:`PathSpec` is what the controller asks of an agent for one host pair of a qualified
interaction (topology.yaml ``qualification:``); :class:`PathMeasurement` is what the agent
reports back. Both are wire classes (the same rules as :mod:`agent.wire`: unknown fields
refused, numbers bounded). :func:`measure` runs the probes of :mod:`agent.probes.pmtu`,
:mod:`agent.probes.rtt` and :mod:`agent.probes.throughput` one after the other (never two
measurements of one path at once, so they do not disturb each other), each bounded.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated

from netcheck.agent.probes import pmtu, rtt, throughput
from netcheck.agent.wire import _FORBID, InteractionId, Limit, Port, Seconds

MAX_PATHS = 256
MAX_THROUGHPUT_PORTS = throughput.MAX_STREAMS
Mtu = Annotated[int, Limit(ge=68, le=65535)]
Ratio = Annotated[float, Limit(ge=0, le=1)]
Mbit = Annotated[float, Limit(ge=0, le=1e7)]
Text = Annotated[str, Limit(max_length=512)]
Name = Annotated[str, Limit(max_length=128)]


@dataclasses.dataclass(frozen=True)
class PathSpec:
    """One path to qualify: from this agent to (dst_host, dst_address) on `port`."""

    __pydantic_config__ = _FORBID

    interaction: InteractionId
    dst_role: Name
    dst_host: Name
    dst_address: Name
    port: Port
    throughput_ports: Annotated[tuple[Port, ...], Limit(max_length=MAX_THROUGHPUT_PORTS)] = ()
    rtt_samples: Annotated[int, Limit(ge=1, le=1000)] = 10
    throughput_seconds: Annotated[float, Limit(ge=0.1, le=throughput.MAX_SECONDS)] = 10.0
    throughput_bytes_per_stream: Annotated[int, Limit(ge=1, le=16 * 2**30)] = 256 * 2**20


@dataclasses.dataclass(frozen=True)
class PathMeasurement:
    """What the agent measured on one path (None: not measured this time)."""

    __pydantic_config__ = _FORBID

    interaction: InteractionId
    src_host: Name
    dst_host: Name
    dst_address: Name
    port: Port
    at: float
    mtu: Mtu | None = None
    route_mtu: Mtu | None = None
    icmp: bool | None = None
    black_hole: bool = False
    mtu_probes: Annotated[int, Limit(ge=0, le=1000)] = 0
    rtt_avg_s: Seconds | None = None
    rtt_min_s: Seconds | None = None
    rtt_max_s: Seconds | None = None
    jitter_s: Seconds | None = None
    loss: Ratio | None = None
    rtt_samples: Annotated[int, Limit(ge=0, le=1000)] = 0
    up_mbit_s: Mbit | None = None
    down_mbit_s: Mbit | None = None
    throughput_streams: Annotated[int, Limit(ge=0, le=MAX_THROUGHPUT_PORTS)] = 0
    error: Text = ""


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
