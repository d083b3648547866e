"""Controller ingest: N simulated agents (aiohttp clients) against the real controller.

The controller is ``netcheck-controller serve`` as the lab starts it
(:func:`deploy.lab.argv.controller_argv`), on the loopback, in its own process.

Each agent registers (a real Registration, the controller answers its Plan), then posts
ResultBatches of ``RESULTS_PER_BATCH`` results (the busiest role's outbound check count,
PIO's 60) with listener states. The SQLite file is in a temp dir (WAL, synchronous=FULL, as
the store opens it). Two loads: a burst (every agent posts at the same moment, every round)
and a paced round (the agents' posts spread evenly over ``paced_window_s``). While the bursts
run, one reader fetches the page, the JSON report and ``/metrics`` in turn, without pause:
their latencies are the "readers never block writers" figures (issue 12).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.cmd import REPO, BenchError, kill, spawn
from bench.report import Section, Target, secs
from bench.stats import median, percentile
from deploy.lab.argv import Insecure, controller_argv

ROLE = "cloud_vm"
RESULTS_PER_BATCH = 60
TOPOLOGY = REPO / "topology.yaml"
# What a reader fetches in turn while the bursts run.
READ_PATHS = ("/", "/api/v1/report", "/metrics")


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    agents: tuple[int, ...]
    repeats: int
    paced_window_s: float = 5.0


def _host(i: int) -> tuple[str, str]:
    return f"bench-vm-{i}", f"198.18.{20 + i // 250}.{i % 250 + 1}"


def inventory_with_agents(n: int) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "inventory.example.yaml").read_text())
    doc["hosts"][ROLE] = [{"name": h, "address": a} for h, a in map(_host, range(n))]
    return doc


def batch_body(i: int, round_no: int) -> bytes:
    host, address = _host(i)
    now = time.time()
    results = [
        {
            "check_id": f"15:{host}>cloud-mgr:{9000 + k}",
            "interaction": 15,
            "src_host": host,
            "src_address": address,
            "dst_host": "cloud-mgr",
            "dst_address": "198.18.2.30",
            "port": 9000 + k,
            "state": "open" if (k + round_no) % 4 else "filtered",
            "mode": "connect",
            "attempts": 1,
            "started_at": now,
            "latency_s": 0.0004,
        }
        for k in range(RESULTS_PER_BATCH)
    ]
    listeners = [{"port": 22, "state": "listening", "since": now}]
    body = {"role": ROLE, "host": host, "results": results, "listeners": listeners, "sent_at": now}
    return json.dumps(body).encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def controller(n: int) -> Iterator[tuple[str, str, Callable[[], int]]]:
    """(base URL, token, pid) of a controller process with an inventory of `n` agents."""
    with tempfile.TemporaryDirectory(prefix="ncbench-ingest-") as tmp:
        inv = Path(tmp) / "inventory.yaml"
        inv.write_text(yaml.safe_dump(inventory_with_agents(n), sort_keys=False))
        token = secrets.token_urlsafe(24)
        token_file = Path(tmp) / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(token)
        port = _free_port()
        db = Path(tmp) / "netcheck.db"
        argv = controller_argv(TOPOLOGY, inv, f"127.0.0.1:{port}", db, Insecure(token_file))
        with open(Path(tmp) / "controller.log", "wb") as log:
            proc = spawn(argv, stderr=log)
        try:
            yield f"http://127.0.0.1:{port}", token, lambda: proc.pid
        finally:
            kill(proc)


async def _wait_ready(session: aiohttp.ClientSession, base: str, bound_s: float = 30.0) -> None:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(base + "/healthz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise BenchError(f"the controller at {base} did not answer /healthz within {bound_s:g} s")


@dataclasses.dataclass
class Measured:
    register_rtt: list[float] = dataclasses.field(default_factory=list)
    burst_rtt: list[float] = dataclasses.field(default_factory=list)
    burst_rate: list[float] = dataclasses.field(default_factory=list)  # results/s per round
    paced_rtt: list[float] = dataclasses.field(default_factory=list)
    accepted: int = 0
    server_cpu_s: float = 0.0
    burst_wall_s: list[float] = dataclasses.field(default_factory=list)
    # path -> latencies of the reader's GETs while the bursts ran
    reader_rtt: dict[str, list[float]] = dataclasses.field(default_factory=dict)


async def _read_while(
    session: aiohttp.ClientSession, base: str, stop: asyncio.Event, out: dict[str, list[float]]
) -> None:
    """GET each of READ_PATHS in turn until `stop`, recording each latency."""
    while not stop.is_set():
        for path in READ_PATHS:
            t0 = time.perf_counter()
            async with session.get(base + path) as r:
                await r.read()
                status = r.status
            if status != 200:
                raise BenchError(f"GET {path} while ingesting: HTTP {status}")
            out.setdefault(path, []).append(time.perf_counter() - t0)


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, rtts: list[float]
) -> dict[str, Any]:
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        answer: dict[str, Any] = await r.json(content_type=None)
        status = r.status
    rtts.append(time.perf_counter() - t0)
    if status != 200:
        raise BenchError(f"POST {url}: HTTP {status} {answer}")
    return answer


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(n: int, repeats: int, window_s: float, log: Callable[[str], None]) -> Measured:
    m = Measured()
    with controller(n) as (base, token, pid):
        headers = {"Authorization": f"Bearer {token}"}
        # One session per simulated agent: each agent is its own client with its connection.
        sessions = [
            aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=120))
            for _ in range(n)
        ]
        try:
            await _wait_ready(sessions[0], base)
            reg_url, res_url = base + "/api/v1/register", base + "/api/v1/results"
            regs = [
                json.dumps(
                    {"role": ROLE, "host": h, "address": a, "version": "bench", "mode": "connect"}
                ).encode()
                for h, a in map(_host, range(n))
            ]
            sem = asyncio.Semaphore(64)

            async def register(i: int) -> None:
                async with sem:
                    await _post(sessions[i], reg_url, regs[i], m.register_rtt)

            await asyncio.gather(*(register(i) for i in range(n)))
            log(f"ingest {n}: registered, register p50 {median(m.register_rtt) * 1e3:.1f} ms")
            cpu0 = _cpu_s(pid())
            stop_reading = asyncio.Event()
            reader = asyncio.ensure_future(
                _read_while(sessions[0], base, stop_reading, m.reader_rtt)
            )
            for r in range(repeats):
                bodies = [batch_body(i, r) for i in range(n)]
                t0 = time.perf_counter()
                answers = await asyncio.gather(
                    *(_post(sessions[i], res_url, bodies[i], m.burst_rtt) for i in range(n))
                )
                wall = time.perf_counter() - t0
                got = sum(int(a["accepted"]) for a in answers)
                m.accepted += got
                m.burst_wall_s.append(wall)
                m.burst_rate.append(got / wall)
                log(f"ingest {n} burst {r + 1}/{repeats}: {got} results in {wall:.2f} s")
            m.server_cpu_s = _cpu_s(pid()) - cpu0
            stop_reading.set()
            await reader
            for path, rtts in m.reader_rtt.items():
                log(f"ingest {n}: GET {path} during bursts p50/p99 {_p50_p99(rtts)} ms")
            bodies = [batch_body(i, repeats) for i in range(n)]
            start = time.perf_counter()

            async def paced(i: int) -> None:
                await asyncio.sleep(max(0.0, start + window_s * i / n - time.perf_counter()))
                await _post(sessions[i], res_url, bodies[i], m.paced_rtt)

            await asyncio.gather(*(paced(i) for i in range(n)))
        finally:
            for s in sessions:
                await s.close()
    return m


def _p50_p99(xs: list[float]) -> str:
    return f"{percentile(xs, 50) * 1e3:.1f} / {percentile(xs, 99) * 1e3:.1f}"


def run_ingest(cfg: IngestConfig, log: Callable[[str], None]) -> Section:
    rows: list[tuple[str, ...]] = []
    targets: list[Target] = []
    for n in cfg.agents:
        m = asyncio.run(drive(n, cfg.repeats, cfg.paced_window_s, log))
        rate = median(m.burst_rate)
        results_total = n * RESULTS_PER_BATCH * cfg.repeats
        rows.append(
            (
                str(n),
                f"{rate:,.0f}",
                secs(median(m.burst_wall_s)),
                _p50_p99(m.burst_rtt),
                _p50_p99(m.paced_rtt),
                _p50_p99(m.register_rtt),
                f"{m.server_cpu_s / max(1, results_total) * 1e6:.1f} µs",
            )
        )
        if n == max(cfg.agents):
            targets.append(
                Target(
                    name=f"controller ingest rate ({n} agents, burst)",
                    goal=">= 50,000 results/s",
                    measured=f"{rate:,.0f} results/s",
                    met=rate >= 50_000,
                    gap="" if rate >= 50_000 else f"{50_000 / rate:.1f} x short",
                )
            )
            p99 = percentile(m.paced_rtt, 99) * 1e3
            burst99 = percentile(m.burst_rtt, 99) * 1e3
            targets.append(
                Target(
                    name=f"controller p99 round trip ({n} agents)",
                    goal="< 50 ms",
                    measured=f"paced {p99:.1f} ms; burst (all at once) {burst99:.0f} ms",
                    met=p99 < 50,
                    gap="" if p99 < 50 else f"{p99 / 50:.1f} x over (paced)",
                )
            )
            if m.reader_rtt:
                worst = max(percentile(v, 99) for v in m.reader_rtt.values()) * 1e3
                each = "; ".join(
                    f"{p} {percentile(v, 99) * 1e3:.0f} ms ({len(v)} GETs)"
                    for p, v in m.reader_rtt.items()
                )
                targets.append(
                    Target(
                        name=f"reader p99 while {n}-agent bursts run",
                        goal="< 250 ms (page, report, /metrics)",
                        measured=each,
                        met=worst < 250,
                        gap="" if worst < 250 else f"{worst / 250:.1f} x over",
                    )
                )
    method = (
        "The real controller, `netcheck-controller serve` (as the lab starts it), in its own "
        "process on 127.0.0.1, SQLite "
        f"file in a temp dir; N agents of role `{ROLE}` (one aiohttp ClientSession each) "
        f"register, then post batches of {RESULTS_PER_BATCH} results plus 1 listener state. "
        f"Burst: all N post at once, {cfg.repeats} round(s), rate = results accepted / wall of "
        f"the round (median over rounds). Paced: one post per agent, spread evenly over "
        f"{cfg.paced_window_s:g} s. Round trips are client-side, request sent to JSON answer "
        "read. Server CPU is the controller process's user+system time over the burst rounds. "
        f"During the bursts one more client GETs {', '.join(READ_PATHS)} in turn without pause "
        "(reader p99: request sent to body read)."
    )
    return Section(
        title="Controller ingest",
        method=method,
        headers=(
            "agents",
            "results/s (burst, median)",
            "burst round wall",
            "burst rtt p50 / p99 (ms)",
            "paced rtt p50 / p99 (ms)",
            "register rtt p50 / p99 (ms)",
            "server CPU per result",
        ),
        rows=tuple(rows),
        targets=tuple(targets),
    )
