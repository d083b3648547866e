"""The agent's own health: ``/healthz`` and ``/metrics`` (built from live state at scrape)."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.wire import PROBE_STATES, ListenState, ProbeResult

if TYPE_CHECKING:
    from aiohttp import web

    from agent.link import Link
    from agent.listeners import ListenerSet

LISTEN_STATES: tuple[ListenState, ...] = ("listening", "occupied", "denied", "error")


@dataclasses.dataclass
class AgentState:
    """What the health endpoints report; the daemon updates it."""

    mode: str
    link: Link | None = None
    listeners: ListenerSet | None = None
    probes: Counter[str] = dataclasses.field(default_factory=Counter)
    rounds: int = 0
    started_at: float = dataclasses.field(default_factory=time.time)

    def count(self, results: list[ProbeResult]) -> None:
        self.probes.update(r.state for r in results)
        self.rounds += 1


class AgentCollector(Collector):
    def __init__(self, state: AgentState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s = self.state
        probes = CounterMetricFamily(
            "netcheck_agent_probes", "Probe results by state.", labels=["state"]
        )
        for state in PROBE_STATES:
            probes.add_metric([state], s.probes.get(state, 0))
        yield probes
        listeners = GaugeMetricFamily(
            "netcheck_agent_listeners", "Stand-in listeners by state.", labels=["state"]
        )
        held = Counter(x.state for x in s.listeners.statuses()) if s.listeners else Counter()
        for lstate in LISTEN_STATES:
            listeners.add_metric([lstate], held.get(lstate, 0))
        yield listeners
        link = s.link
        yield GaugeMetricFamily(
            "netcheck_agent_buffered_results",
            "Results waiting for the controller.",
            value=link.buffered if link else 0,
        )
        yield CounterMetricFamily(
            "netcheck_agent_dropped_results",
            "Results dropped (buffer full while the controller was away, or rejected).",
            value=link.dropped_total if link else 0,
        )
        yield CounterMetricFamily(
            "netcheck_agent_rejected_batches",
            "Batches the controller refused with HTTP 400.",
            value=link.rejected_batches if link else 0,
        )
        if link is not None and link.last_report is not None:
            yield GaugeMetricFamily(
                "netcheck_agent_last_report_timestamp_seconds",
                "When the controller last accepted a batch.",
                value=link.last_report,
            )
        yield CounterMetricFamily(
            "netcheck_agent_probe_rounds", "Probe rounds run.", value=s.rounds
        )
        info = GaugeMetricFamily(
            "netcheck_agent_info", "Agent version and probe mode.", labels=["version", "mode"]
        )
        info.add_metric([__version__, s.mode], 1)
        yield info


def make_registry(state: AgentState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(state))
    return registry


def make_app(state: AgentState, registry: CollectorRegistry) -> web.Application:
    from aiohttp import web

    async def healthz(_: web.Request) -> web.Response:
        body: dict[str, Any] = {
            "status": "ok",
            "version": __version__,
            "mode": state.mode,
            "registered": bool(state.link and state.link.plan),
            "rounds": state.rounds,
            "buffered_results": state.link.buffered if state.link else 0,
            "last_report": state.link.last_report if state.link else None,
        }
        return web.json_response(body)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    app = web.Application(client_max_size=1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_health_server(state: AgentState, listen: str) -> web.AppRunner:
    """Serve the health app on ``HOST:PORT``; the caller cleans the runner up."""
    from aiohttp import web

    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(make_app(state, make_registry(state)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port)).start()
    return runner
