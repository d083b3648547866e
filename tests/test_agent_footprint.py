"""The agent's footprint (issue 6): a ``serve`` agent holding 90 stand-in listeners stays
within 40 MiB RSS after probing them all and being scraped, and uses no CPU when idle.

Real processes on 127.0.0.0/8: a small aiohttp controller here, the agent as a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_helpers import self_plan
from aiohttp import web
from port_helpers import free_ports

from netcheck.agent.wire import Plan, ResultBatch, decode, encode

REPO = Path(__file__).resolve().parent.parent
ADDR = "127.0.0.31"
RSS_LIMIT_KIB = 40 * 1024


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def plan_of_90() -> Plan:
    return self_plan(free_ports(90, ADDR), ADDR)


@pytest.fixture
async def controller() -> AsyncIterator[tuple[str, Plan, list[ResultBatch]]]:
    plan = plan_of_90()
    batches: list[ResultBatch] = []

    async def register(_: web.Request) -> web.Response:
        return web.json_response(encode(plan))

    async def results(request: web.Request) -> web.Response:
        batches.append(decode(ResultBatch, await request.json()))
        return web.json_response({"accepted": len(batches[-1].results)})

    app = web.Application(client_max_size=16 << 20)
    app.router.add_post("/api/v1/register", register)
    app.router.add_post("/api/v1/results", results)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_ports(1, "127.0.0.1")[0]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", plan, batches
    finally:
        await runner.cleanup()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: bytes = resp.read()
        return body.decode()


@pytest.mark.slow
async def test_90_listeners_within_40_mib_and_idle_without_cpu(
    controller: tuple[str, Plan, list[ResultBatch]],
) -> None:
    url, plan, batches = controller
    health = free_ports(1, "127.0.0.1")[0]
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "netcheck.agent", "serve", "--controller", url, "--splay", "0.5"),
        *("--role", "a", "--host", "a", "--address", ADDR, "--mode", "connect"),
        *("--health-listen", f"127.0.0.1:{health}"),
        cwd=REPO,
        env={**os.environ, "NETCHECK_TOKEN": "footprint"},
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            if batches or proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert batches, "no report from the agent within 30 s"
        held = [s for s in batches[-1].listeners if s.state == "listening"]
        assert len(held) == 90
        assert [r.state for r in batches[-1].results] == ["open"] * 90
        ok = [r for r in batches[-1].results if r.service_check and r.service_check.outcome == "ok"]
        assert len(ok) == sum(1 for s in plan.listen if s.service != "tcp")  # tcp has none
        text = await asyncio.to_thread(scrape, f"http://127.0.0.1:{health}/metrics")
        assert 'netcheck_agent_listeners{state="listening"} 90.0' in text
        await asyncio.sleep(0.5)  # the listeners' connections wind down
        mem = proc_status(proc.pid)
        assert mem["VmRSS"] <= RSS_LIMIT_KIB, f"RSS {mem['VmRSS'] / 1024:.1f} MiB"
        # The peak too: the probe round's 90 TLS/SSH/... conversations at once included.
        assert mem["VmHWM"] <= RSS_LIMIT_KIB, f"peak RSS {mem['VmHWM'] / 1024:.1f} MiB"
        before = cpu_ticks(proc.pid)
        await asyncio.sleep(3.0)
        idle = cpu_ticks(proc.pid) - before
        assert idle <= 1, f"{idle} clock ticks of CPU in 3 s of idle"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0
