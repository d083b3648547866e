"""The "interconnect" request: an agent qualifies its plan's paths against real stand-ins."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from netcheck.agent.listeners import ListenerSet
from netcheck.agent.requests import Context, Requests
from netcheck.agent.wire import (
    AgentRequest,
    ListenSpec,
    PathMeasurement,
    PathSpec,
    Plan,
    RequestParam,
    RequestReport,
)
from netcheck.controller.expand import expand, plan_for
from netcheck.controller.interconnect import newest_measurements, path_keys
from netcheck.controller.inventory import load_inventory
from netcheck.controller.spec import load_spec

ADDR = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind((ADDR, 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _plan(paths: tuple[PathSpec, ...]) -> Plan:
    return Plan(role="prem_manager", host="pm", address=ADDR, listen=(), checks=(), paths=paths)


async def test_the_agent_measures_each_path_of_its_plan_when_asked() -> None:
    ports = _ports(3)
    listeners = ListenerSet(ADDR, None, idle_timeout=1.0)
    await listeners.reconcile(ListenSpec(port=p, service="tcp") for p in ports[:2])
    spec = PathSpec(9, "cloud_manager", "cm", ADDR, ports[0], tuple(ports[:2]), 3, 0.5, 1 << 20)
    silent = PathSpec(9, "cloud_manager", "cm2", ADDR, ports[2], rtt_samples=2)
    reports: list[RequestReport] = []
    book = Requests(reports.append)
    params = (RequestParam("throughput", 1.0),)
    req = AgentRequest("r1", "interconnect", "prem_manager", "pm", time.time() + 120, params)
    try:
        book.offer([req])
        assert await book.run_next(Context(_plan((spec, silent)), "connect"))
    finally:
        await listeners.close()
    assert [r.state for r in reports] == ["running", "done"]
    done = reports[-1]
    assert done.detail == "2 path(s) measured with throughput"
    good, bad = done.paths
    assert good.dst_host == "cm" and good.src_host == "pm" and good.mtu and good.error == ""
    assert good.loss == 0.0 and good.rtt_samples == 3 and good.rtt_avg_s is not None
    assert good.up_mbit_s and good.down_mbit_s and good.throughput_streams == 2
    # nothing listens on the second: said, not invented
    assert bad.mtu is None and bad.loss == 1.0 and "refused" in bad.error.lower()
    assert bad.up_mbit_s is None  # no throughput ports in its spec


def test_plans_carry_the_qualified_paths_of_the_site() -> None:
    spec = load_spec(ROOT / "topology.yaml")
    inv = load_inventory(ROOT / "inventory.example.yaml", spec)
    pm = inv.of_role("prem_manager")[0]
    plan = plan_for(spec, inv, "prem_manager", pm.name, pm.address)
    (p,) = plan.paths
    assert (p.interaction, p.port, p.throughput_ports) == (9, 6000, tuple(range(6000, 6011)))
    keys = path_keys(spec.qualification, {i.id: i for i in spec.interactions}, expand(spec, inv))
    # interaction 10's data ports are probed both ways: both directions are paths
    ten = sorted((k.src_role, k.dst_role) for k in keys if k.interaction == 10)
    assert ten == [("cloud_cache", "cloud_manager"), ("cloud_manager", "cloud_cache")]
    assert {k.interaction for k in keys} == {8, 9, 10, 11, 12, 14}


def _m(at: float, **kw: object) -> PathMeasurement:
    return PathMeasurement(9, "pm", "cm", ADDR, 6000, at, **kw)  # type: ignore[arg-type]


def test_newest_measurement_keeps_an_older_throughput() -> None:
    got = newest_measurements([[_m(1.0, mtu=1500, up_mbit_s=900.0, down_mbit_s=800.0)],
                               [_m(2.0, mtu=1400)]])  # fmt: skip
    m = got[(9, "pm", "cm")]
    assert m.mtu == 1400 and m.at == 2.0 and m.up_mbit_s == 900.0 and m.down_mbit_s == 800.0
    newer = newest_measurements([[_m(3.0, up_mbit_s=10.0)], [_m(2.0, up_mbit_s=900.0)]])
    assert newer[(9, "pm", "cm")].up_mbit_s == 10.0
