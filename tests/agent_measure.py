"""Measure the agent's two "done when" figures (not collected by pytest).

    python3 tests/agent_measure.py            # RSS with 90 stand-in listeners
    sudo python3 tests/agent_measure.py       # + 150 ports, 50 % dropped, in namespaces

1. RSS of ``netcheck-agent serve`` holding 90 stand-in listeners (TLS, SSH, authd, ...),
   registered with a small real controller on 127.0.0.1, after its first report.
2. Wall time of ``netcheck-agent run`` on 150 ports of which 75 are dropped by nftables on
   a router (namespaces in 198.18.0.0/15), in connect and SYN mode, against timeout_s:
   with the fixed timeout (min_timeout_s 0) and with the adaptive one of topology.yaml
   (min_timeout_s 0.5, rtt_factor 10).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_helpers import (
    CLIENT,
    LISTEN_SCRIPT,
    PYTHON,
    SERVER,
    Lab,
    root_lab_skip_reason,
    self_plan,
)

from netcheck.agent.wire import ResultBatch, decode, encode

REPO = Path(__file__).resolve().parent.parent
ADDR = "127.0.0.23"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


async def measure_rss() -> None:
    plan = self_plan(range(20000, 20090), ADDR)
    batches: list[ResultBatch] = []

    async def register(_: web.Request) -> web.Response:
        return web.json_response(encode(plan))

    async def results(request: web.Request) -> web.Response:
        batches.append(decode(ResultBatch, await request.json()))
        return web.json_response({"accepted": len(batches[-1].results)})

    app = web.Application()
    app.router.add_post("/api/v1/register", register)
    app.router.add_post("/api/v1/results", results)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 18099).start()
    env = {**os.environ, "NETCHECK_TOKEN": "measure"}
    proc = await asyncio.create_subprocess_exec(
        *(PYTHON, "-m", "netcheck.agent", "serve", "--controller", "http://127.0.0.1:18099"),
        *("--role", "a", "--host", "a", "--address", ADDR, "--mode", "connect"),
        *("--health-listen", "127.0.0.1:18098"),
        cwd=REPO,
        env=env,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(900):  # the first round starts at a random offset below 60 s
            if batches:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        held = sum(1 for s in batches[-1].listeners if s.state == "listening") if batches else 0
        states: dict[str, int] = {}
        for r in batches[-1].results if batches else ():
            states[r.state] = states.get(r.state, 0) + 1
        print(f"serve: {held} stand-in listeners, results {states}")
        print(f"serve: RSS {rss_kib(proc.pid) / 1024:.1f} MiB (limit 60 MiB)")
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await runner.cleanup()


def measure_dropped_plan() -> None:
    reason = root_lab_skip_reason()
    if reason:
        print(f"150-port plan: skipped ({reason})")
        return
    ports = list(range(30001, 30151))
    dropped = ports[::2]
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="nct-agent-") as tmp:
        rules = ", ".join(map(str, dropped))
        lab.nft(
            "r2",
            "table inet nct_agent {\n chain f {\n  type filter hook forward priority 0;\n"
            f"  tcp dport {{ {rules} }} drop\n }}\n}}\n",
        )
        lab.spawn("s", [PYTHON, "-c", LISTEN_SCRIPT, *map(str, ports[1::4])])
        time.sleep(0.5)
        timeout = 2.0
        checks = [
            {
                "check_id": f"9:c>s:{p}",
                "interaction": 9,
                "dst_role": "s",
                "dst_host": "s",
                "dst_address": SERVER,
                "port": p,
                "service": "tcp",
            }
            for p in ports
        ]
        for floor in (0.0, 0.5):
            plan: dict[str, Any] = {"role": "c", "host": "c", "address": CLIENT, "listen": []}
            plan.update(checks=checks, timeout_s=timeout, min_timeout_s=floor, rtt_factor=10.0)
            plan_file = Path(tmp) / "plan.json"
            plan_file.write_text(json.dumps(plan))
            _run_modes(lab, Path(tmp), plan_file, timeout, floor)


def _run_modes(lab: Lab, tmp: Path, plan_file: Path, timeout: float, floor: float) -> None:
    how = f"adaptive, floor {floor:g} s" if floor else "fixed timeout"
    for mode in ("connect", "syn"):
        out = tmp / f"out-{mode}.json"
        t0 = time.monotonic()
        argv = [PYTHON, "-m", "netcheck.agent", "run", "--plan", str(plan_file), "--out", str(out)]
        proc = lab.run("c", [*argv, "--mode", mode], timeout=60)
        wall = time.monotonic() - t0
        batch = json.loads(out.read_text())
        states: dict[str, int] = {}
        for r in batch["results"]:
            states[r["state"]] = states.get(r["state"], 0) + 1
        probe_span = batch["sent_at"] - min(r["started_at"] for r in batch["results"])
        print(
            f"150 ports, 75 dropped, {mode}, {how}: rc={proc.returncode} {states}; "
            f"probe phase {probe_span:.2f} s, whole CLI {wall:.2f} s "
            f"(timeout {timeout:g} s, limit {2 * timeout:g} s)"
        )


if __name__ == "__main__":
    asyncio.run(measure_rss())
    measure_dropped_plan()
