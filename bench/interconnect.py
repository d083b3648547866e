"""Interconnect qualification: throughput on 6000-6010 against iperf3, path MTU vs configured.

A routed lab path (:class:`deploy.lab.pathlab.PathLab`): client -- r1 == r2 -- server, the
middle link playing the interconnect. The server runs the agent's stand-ins on 6000-6010 in a
process of their own (``python -m deploy.lab.agentstandin``) and ``iperf3 -s`` on 7000 (a data
port of the same interaction, so the same path and rules). Per repeat, interleaved:

* netcheck: :func:`agent.probes.throughput.run`, 11 streams (one per port 6000-6010), up;
* iperf3: ``iperf3 -c SERVER -p 7000 -P 11 -t T -J``, its receiver's bits per second;

once on a tbf-shaped interconnect (HDM's published minimum, 1 Gbit/s) and once unshaped.
Path MTU: the interconnect set to each of several MTUs, with ICMP fragmentation-needed
allowed and then dropped by r1 (a black hole); found vs configured must be exact.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable

from bench.cmd import BenchError
from bench.report import Section, Target
from bench.stats import median
from deploy.lab import linkshape
from deploy.lab.enter import call_in
from deploy.lab.pathlab import INTERCONNECT, SERVER, PathLab
from netcheck.agent.probes import pmtu, throughput

PORTS = list(range(6000, 6011))
IPERF_PORT = 7000
RATIO_GOAL = 0.8
SHAPED_MBIT = 1000  # HDM's published minimum link between the sites
MTUS = (1500, 1400, 1280, 1000)


@dataclasses.dataclass(frozen=True)
class InterconnectConfig:
    repeats: int = 3
    seconds: float = 5.0
    prefix: str = "nchb-"


def _iperf3(lab: PathLab, seconds: float) -> float:
    """iperf3's received Mbit/s, 11 parallel streams, client in the client namespace."""
    cmd = ["ip", "netns", "exec", lab.ns["c"], "iperf3", "-c", SERVER, "-p", str(IPERF_PORT),
           "-P", str(len(PORTS)), "-t", f"{seconds:g}", "-J"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if proc.returncode != 0:
        raise BenchError(f"iperf3: {proc.stderr.strip() or proc.stdout[-300:]}")
    data = json.loads(proc.stdout)
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6


def _netcheck(lab: PathLab, seconds: float) -> float:
    got = call_in(
        lab.ns["c"],
        lambda: throughput.run(SERVER, PORTS, "up", bytes_per_stream=2**34, seconds=seconds),
    )
    if got.errors:
        raise BenchError(f"netcheck throughput: {got.errors}")
    return got.mbit_s


def _start(lab: PathLab, argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.ns["s"], *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _set_mtu(lab: PathLab, mtu: int) -> None:
    for key, dev in INTERCONNECT:
        linkshape.set_mtu(lab.ns[key], dev, mtu)


def run_interconnect(cfg: InterconnectConfig, log: Callable[[str], None]) -> Section:
    rates: dict[str, list[tuple[float, float]]] = {"shaped": [], "unshaped": []}
    mtu_rows: list[tuple[str, ...]] = []
    exact = True
    with PathLab(cfg.prefix) as lab:
        sink = _start(lab, [sys.executable, "-m", "deploy.lab.agentstandin", SERVER, "6000-6010"])
        iperf = _start(lab, ["iperf3", "-s", "-p", str(IPERF_PORT)])
        try:
            assert sink.stdout is not None
            if sink.stdout.readline().strip() != "ready":
                raise BenchError("the stand-ins did not start")
            time.sleep(0.3)  # iperf3 -s binds at once; no readiness line
            r1, dev = lab.ns[INTERCONNECT[0][0]], INTERCONNECT[0][1]
            for case in ("shaped", "unshaped"):
                if case == "shaped":
                    why = linkshape.tc_has(r1, "tbf", dev)
                    if why is not None:
                        log(f"interconnect: no tbf ({why}); shaped case skipped")
                        continue
                    linkshape.shape(r1, dev, SHAPED_MBIT, burst_kb=1024)
                try:
                    for r in range(cfg.repeats):
                        ours = _netcheck(lab, cfg.seconds)
                        ref = _iperf3(lab, cfg.seconds)
                        rates[case].append((ours, ref))
                        log(f"interconnect {case} {r + 1}/{cfg.repeats}: netcheck {ours:.0f}"
                            f" Mbit/s, iperf3 {ref:.0f} Mbit/s")  # fmt: skip
                finally:
                    linkshape.unshape(r1, dev)
            for mtu in MTUS:
                _set_mtu(lab, mtu)
                for icmp in (True, False):
                    if not icmp:
                        linkshape.block_frag_needed(r1)
                    try:
                        linkshape.flush_pmtu(lab.ns["c"])
                        got = call_in(
                            lab.ns["c"], lambda: pmtu.discover(SERVER, 6003, timeout_s=0.5)
                        )
                    finally:
                        linkshape.allow_frag_needed(r1)
                    ok = got.mtu == mtu and (got.black_hole == (not icmp) or mtu == 1500)
                    exact = exact and ok
                    how = "ICMP frag-needed" if icmp else "dropped (black hole)"
                    found = "yes" if got.icmp else ("no: black hole" if got.black_hole else "-")
                    took = f"{got.elapsed_s:.2f} s"
                    verdict = "exact" if ok else "WRONG"
                    mtu_rows.append((f"{mtu}", how, f"{got.mtu}", found, str(got.probes), took,
                                     verdict))  # fmt: skip
                    log(f"interconnect MTU {mtu} ({how}): found {got.mtu} in {got.probes} probes")
            _set_mtu(lab, 1500)
        finally:
            _stop(sink)
            _stop(iperf)
    return _section(cfg, rates, mtu_rows, exact)


def _section(
    cfg: InterconnectConfig,
    rates: dict[str, list[tuple[float, float]]],
    mtu_rows: list[tuple[str, ...]],
    exact: bool,
) -> Section:
    rows: list[tuple[str, ...]] = []
    targets: list[Target] = []
    for case, runs in rates.items():
        if not runs:
            continue
        ours = median([a for a, _ in runs])
        ref = median([b for _, b in runs])
        ratio = median([a / b for a, b in runs if b > 0])
        label = f"tbf {SHAPED_MBIT} Mbit/s" if case == "shaped" else "unshaped veth"
        rows.append((label, f"{ours:.0f} Mbit/s", f"{ref:.0f} Mbit/s", f"{ratio:.2f}",
                     str(len(runs))))  # fmt: skip
        targets.append(
            Target(
                name=f"throughput on 6000-6010, {label}",
                goal=f">= {RATIO_GOAL} x iperf3 (same path, same run)",
                measured=f"{ratio:.2f} x ({ours:.0f} vs {ref:.0f} Mbit/s)",
                met=ratio >= RATIO_GOAL,
                gap="" if ratio >= RATIO_GOAL else f"{RATIO_GOAL - ratio:.2f} short",
            )
        )
    targets.append(
        Target(
            name="path MTU found vs configured",
            goal="exact, with ICMP and as a black hole",
            measured=f"{sum(r[-1] == 'exact' for r in mtu_rows)}/{len(mtu_rows)} exact",
            met=exact and bool(mtu_rows),
        )
    )
    method = (
        "Lab path client -- r1 == r2 -- server (namespaces, veth), the r1-r2 link as the "
        f"interconnect. Throughput: {cfg.repeats} interleaved run(s) of {cfg.seconds:g} s each: "
        "netcheck's agent probe (11 TCP streams, one per port 6000-6010, to the agent's own "
        "stand-ins in a separate process, counted by the receiving stand-in) and iperf3 -P 11 "
        f"to iperf3 -s on {IPERF_PORT} on the same host; medians, ratio of each run's pair. "
        "Path MTU: r1-r2 set to each MTU, PMTU cache flushed, found by the agent's probe on "
        "6003 with ICMP fragmentation-needed allowed, then dropped on r1 (nftables output)."
    )
    notes = tuple(
        f"MTU {r[0]} ({r[1]}): found {r[2]}, ICMP {r[3]}, {r[4]} probe(s) in {r[5]}: {r[6]}"
        for r in mtu_rows
    )
    return Section(
        title="Interconnect qualification",
        method=method,
        headers=("path", "netcheck", "iperf3", "ratio", "runs"),
        rows=tuple(rows),
        targets=tuple(targets),
        notes=notes,
    )
