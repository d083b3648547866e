"""Agent footprint: memory and CPU of real ``netcheck-agent serve`` processes in the lab.

* the Cloud Manager's agent (59 stand-in listeners, the most of any role), idle;
* the PIO's agent (60 outbound checks, the most of any role) through a ``--once`` round.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Callable

from bench.audit import TOPOLOGY, bench_lab, start_agent
from bench.cmd import BenchError
from bench.procstat import TICK_S, Sample, sample
from bench.report import Section, Target, secs
from bench.stats import median
from deploy.lab import procs
from netcheck.controller.expand import listen_specs
from netcheck.controller.spec import Spec

LISTENER_ROLE = "cloud_manager"
PROBER_ROLE = "pio"
RSS_LIMIT_MB = 40.0  # 10^6 bytes, as the target is written


@dataclasses.dataclass(frozen=True)
class FootprintConfig:
    idle_s: float
    repeats: int
    settle_s: float = 2.0


def _mib(kib: int) -> float:
    return kib / 1024.0


def _mb(mib: float) -> float:
    return mib * 1.048576


def _run_sampled(proc: subprocess.Popen[bytes], every_s: float, bound_s: float) -> list[Sample]:
    """Samples of `proc` until it exits (the last one read from its zombie: CPU only)."""
    out: list[Sample] = []
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            out.append(sample(proc.pid))
        except (OSError, IndexError, ValueError):
            break
        if proc.poll() is not None:
            break
        time.sleep(every_s)
    proc.wait(10)
    return out


def run_footprint(spec: Spec, cfg: FootprintConfig, log: Callable[[str], None]) -> Section:
    n_listen = len(listen_specs(spec, LISTENER_ROLE))
    idle_cpu: list[float] = []
    idle_rss: list[float] = []
    busy: list[tuple[float, float, float]] = []  # (peak RSS MiB, CPU s, wall s)
    with bench_lab() as lab:
        mgr = lab.layout.of_role(LISTENER_ROLE)[0]
        pio = lab.layout.of_role(PROBER_ROLE)[0]
        ctl = lab.start_controller(TOPOLOGY, lab.state / "footprint.db")
        others = [h for h in lab.layout.hosts if h not in (mgr, pio)]
        standins = lab.start_standins(spec, others)
        agent = start_agent(lab, mgr, once=False)
        try:
            if lab.wait_listening(spec, 30.0, [mgr]):
                raise BenchError(f"the {LISTENER_ROLE} agent did not hold its ports in 30 s")
            time.sleep(cfg.settle_s)
            for r in range(cfg.repeats):
                a = sample(agent.pid)
                time.sleep(cfg.idle_s)
                b = sample(agent.pid)
                idle_cpu.append((b.cpu_s - a.cpu_s) / cfg.idle_s)
                idle_rss.append(_mib(b.rss_kib))
                log(
                    f"footprint idle {r + 1}/{cfg.repeats}: RSS {_mib(b.rss_kib):.1f} MiB, "
                    f"CPU {b.cpu_s - a.cpu_s:.3f} s in {cfg.idle_s:g} s"
                )
            for r in range(cfg.repeats):
                t0 = time.monotonic()
                proc = start_agent(lab, pio, once=True)
                try:
                    samples = _run_sampled(proc, 0.02, 60.0)
                finally:
                    procs.stop(proc)
                wall = time.monotonic() - t0
                if proc.returncode != 0 or not samples:
                    raise BenchError(f"the {PROBER_ROLE} agent exited with {proc.returncode}")
                peak = max(s.hwm_kib for s in samples)
                busy.append((_mib(peak), samples[-1].cpu_s, wall))
                log(
                    f"footprint probe run {r + 1}/{cfg.repeats}: peak RSS {_mib(peak):.1f} MiB,"
                    f" CPU {samples[-1].cpu_s:.2f} s, wall {wall:.2f} s"
                )
        finally:
            procs.stop(agent)
            for p in standins:
                procs.stop(p)
            procs.stop(ctl)
    return _section(cfg, n_listen, idle_cpu, idle_rss, busy)


def _section(
    cfg: FootprintConfig,
    n_listen: int,
    idle_cpu: list[float],
    idle_rss: list[float],
    busy: list[tuple[float, float, float]],
) -> Section:
    rss_idle = median(idle_rss)
    cpu_idle = median(idle_cpu)
    peak = median([b[0] for b in busy])
    cpu_busy = median([b[1] for b in busy])
    wall_busy = median([b[2] for b in busy])
    resolution = TICK_S / cfg.idle_s * 100
    rows = (
        (
            f"{LISTENER_ROLE} agent, idle ({n_listen} listeners held)",
            f"{_mb(rss_idle):.1f} MB ({rss_idle:.1f} MiB)",
            f"{cpu_idle * 100:.2f} % of one core",
            str(len(idle_cpu)),
            f"{cfg.idle_s:g} s window",
        ),
        (
            f"{PROBER_ROLE} agent, `serve --once` (60 checks, from start to exit)",
            f"{_mb(peak):.1f} MB ({peak:.1f} MiB) peak",
            f"{cpu_busy:.2f} s CPU in {secs(wall_busy)} wall",
            str(len(busy)),
            "includes interpreter start-up and imports",
        ),
    )
    worst = _mb(max(rss_idle, peak))
    targets = (
        Target(
            name="agent RSS with all listeners of the busiest role",
            goal=f"<= {RSS_LIMIT_MB:g} MB",
            measured=f"idle {_mb(rss_idle):.1f} MB; probe run {_mb(peak):.1f} MB peak",
            met=worst <= RSS_LIMIT_MB,
            gap="" if worst <= RSS_LIMIT_MB else f"{worst - RSS_LIMIT_MB:.1f} MB over",
        ),
        Target(
            name="agent CPU when idle",
            goal="no measurable CPU",
            measured=f"{cpu_idle * 100:.2f} % (resolution {resolution:.2f} %)",
            met=cpu_idle * 100 <= resolution,
            gap="" if cpu_idle * 100 <= resolution else "ticks counted while idle",
        ),
    )
    method = (
        "Real `netcheck-agent serve` processes in the benchmark lab (`ncbench-` namespaces), "
        "controller with the spec's probe policy (period 300 s), stand-ins on every other "
        "host. RSS is VmRSS (idle) or VmHWM (peak) from /proc/<pid>/status; CPU is utime + "
        "stime from /proc/<pid>/stat (clock tick "
        f"{TICK_S * 1000:g} ms). Idle: {len(idle_cpu)} window(s) of {cfg.idle_s:g} s after "
        f"the listeners were up and {cfg.settle_s:g} s of settling; the agent's first round "
        "(random offset up to 60 s, no outbound checks for this role) may fall in a window. "
        "Probe run: the PIO agent sampled every 20 ms from launch to exit; medians."
    )
    return Section(
        title="Agent footprint",
        method=method,
        headers=("process", "memory", "CPU", "runs", "note"),
        rows=rows,
        targets=targets,
    )
