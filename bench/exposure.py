"""Exposure sweep: all 65,535 TCP ports of one host pair, netcheck against the raw SYN floor
and nmap -sS -T4, every port dropped, and again with about 1 % of the ports open."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from bench import nmap
from bench.cmd import BenchError, kill, spawn
from bench.cmd import run as run_cmd
from bench.netns import pair
from bench.report import Section, Target, secs
from bench.stats import median
from deploy.lab.netns import run

# The destination's listeners for the "1 % open" case: one socket per port, each accepted
# connection told a banner on every other port, then closed.
LISTEN = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for i, p in enumerate(int(a) for a in sys.argv[1:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p)); s.listen(64); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, b"SSH-2.0-bench\r\n" if i % 2 == 0 else b"")
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        try:
            c, _ = key.fileobj.accept()
        except OSError:
            continue
        try:
            if key.data:
                c.send(key.data)
        except OSError:
            pass
        c.close()
"""


def worker_module(
    module: str, kind: str, args: dict[str, Any], netns: str | None, timeout_s: float
) -> tuple[dict[str, Any], float]:
    """``python -m MODULE KIND @ARGS_FILE`` in `netns`: its JSON answer and wall."""
    with tempfile.NamedTemporaryFile("w", prefix="ncbench-", suffix=".json") as f:
        json.dump(args, f)
        f.flush()
        done = run_cmd([sys.executable, "-m", module, kind, "@" + f.name], timeout_s, netns)
    if done.rc != 0 or done.timed_out:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise BenchError(f"{module} {kind} in {netns}: rc={done.rc}: {tail}")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer, done.wall_s


@dataclasses.dataclass(frozen=True)
class ExposureConfig:
    repeats: int
    lo: int = 1
    hi: int = 65535
    timeout_s: float = 1.0
    open_every: int = 100  # one port in this many open in the second case (~1 %)
    nmap_bound_s: float = 60.0
    rate: float = 1_000_000.0  # effectively unpaced: the floor does not pace either
    default_rate: float = 20_000.0


def _nft_all_but(table: str, lo: int, hi: int, open_ports: list[int]) -> str:
    keep = ", ".join(map(str, open_ports))
    return (
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f"    ct state new tcp dport {lo}-{hi} tcp dport != {{ {keep} }} drop\n"
        "  }\n"
        "}\n"
    )


@dataclasses.dataclass
class Row:
    label: str
    config: str
    probe_s: list[float] = dataclasses.field(default_factory=list)
    counts: Counter[str] = dataclasses.field(default_factory=Counter)
    extra: list[str] = dataclasses.field(default_factory=list)


def _args(p: Any, cfg: ExposureConfig, **kw: Any) -> dict[str, Any]:
    return {
        "src": p.src_address,
        "dst": p.dst_address,
        "lo": cfg.lo,
        "hi": cfg.hi,
        "timeout_s": cfg.timeout_s,
        **kw,
    }


def _case(p: Any, cfg: ExposureConfig, case: str, log: Any) -> list[Row]:
    n = cfg.hi - cfg.lo + 1
    t = cfg.timeout_s
    runs: list[tuple[Row, str, dict[str, Any]]] = [
        (
            Row("floor: raw SYN", f"{n} SYNs built first, sent unpaced, 1 each, {t:g} s"),
            "floor-syn",
            _args(p, cfg),
        ),
        (
            Row("netcheck exposure sweep", f"SYN mode, unpaced, retries 0 (1 SYN), {t:g} s"),
            "sweep",
            _args(p, cfg, mode="syn", rate=cfg.rate, retries=0),
        ),
        (
            Row(
                "netcheck exposure sweep",
                f"SYN mode, unpaced, retries 1 (silent ports twice), {t:g} s",
            ),
            "sweep",
            _args(p, cfg, mode="syn", rate=cfg.rate, retries=1),
        ),
        (
            Row(
                "netcheck exposure sweep",
                f"request defaults: SYN mode, rate {cfg.default_rate:,.0f}/s, retries 1, {t:g} s",
            ),
            "sweep",
            _args(p, cfg, mode="syn", rate=cfg.default_rate, retries=1),
        ),
    ]
    for r in range(cfg.repeats):
        for row, kind, args in runs:
            answer, _wall = worker_module("bench.exposure_worker", kind, args, p.src_netns, 300.0)
            row.probe_s.append(float(answer["probe_s"]))
            row.counts.update({k: int(v) for k, v in answer["counts"].items()})
            if "banners" in answer:
                row.extra.append(f"{answer['banners']} banners")
            log(
                f"exposure {case} run {r + 1}/{cfg.repeats} {row.label} ({row.config}): "
                f"{answer['probe_s']:.2f} s {answer['counts']}"
            )
    return [row for row, _, _ in runs]


def run_exposure(cfg: ExposureConfig, log: Any) -> Section:
    n = cfg.hi - cfg.lo + 1
    rows: list[tuple[str, ...]] = []
    targets: list[Target] = []
    with pair((cfg.lo, cfg.hi)) as p:
        dropped = _case(p, cfg, "all dropped", log)
        log(f"exposure: nmap -sS -Pn -T4 on {n} ports, cut off at {cfg.nmap_bound_s:g} s")
        nm = nmap.scan(
            "S", p.dst_address, list(range(cfg.lo, cfg.hi + 1)), cfg.nmap_bound_s, p.src_netns
        )
        open_ports = list(range(cfg.lo + cfg.open_every // 2, cfg.hi + 1, cfg.open_every))
        run(
            ["ip", "netns", "exec", p.router_netns, "nft", "-f", "-"],
            stdin=_nft_all_but("ncbench", cfg.lo, cfg.hi, open_ports),
        )
        listener = spawn(
            [sys.executable, "-c", LISTEN, *map(str, open_ports)],
            p.dst_netns,
            stdout=subprocess.PIPE,
        )
        try:
            assert listener.stdout is not None
            if listener.stdout.readline().strip() != "ready":
                raise BenchError(f"the destination's listeners did not start: {listener.stderr}")
            time.sleep(0.2)
            some_open = _case(p, cfg, f"{len(open_ports)} open", log)
        finally:
            kill(listener)
    nm_s = nm.wall_s if nm.finished else (nm.eta_total_s or nm.wall_s)
    nm_text = (
        secs(nm.wall_s)
        if nm.finished
        else (
            f"> {nm.wall_s:.0f} s (cut off at {nm.percent or 0:.1f} % done"
            + (
                f"; its own estimate of the whole run: {nm.eta_total_s:.0f} s)"
                if nm.eta_total_s
                else ")"
            )
        )
    )
    for case, group in (("all dropped", dropped), (f"{len(open_ports)} open (~1 %)", some_open)):
        floor = median(group[0].probe_s)
        for row in group:
            m = median(row.probe_s)
            runs = len(row.probe_s)
            counts = ", ".join(f"{k} {v // max(1, runs)}" for k, v in sorted(row.counts.items()))
            if row.extra:
                counts += f" ({row.extra[-1]})"
            rows.append(
                (
                    case,
                    row.label,
                    row.config,
                    secs(m),
                    str(runs),
                    counts,
                    f"{m / floor:.2f} x",
                    f"{nm_s / m:.0f} x" if case == "all dropped" else "",
                )
            )
        best = median(group[2].probe_s)
        targets.append(
            Target(
                name=f"exposure sweep, {n:,} ports, {case}, vs the raw SYN floor",
                goal="<= 2 x the floor (one SYN per port, same timeout)",
                measured=f"{best / floor:.2f} x ({secs(best)} vs {secs(floor)}; retries 1)",
                met=best <= 2 * floor,
                gap="" if best <= 2 * floor else "send path: one packet built per SYN in Python",
            )
        )
    rows.append(
        (
            "all dropped",
            "nmap -sS -Pn -T4",
            "one process",
            nm_text,
            "1",
            ", ".join(f"{k} {v}" for k, v in sorted(Counter(nm.states.values()).items()))
            or "cut off: no port list",
            f"{nm_s / median(dropped[0].probe_s):.0f} x",
            "1.0 x",
        )
    )
    best = median(dropped[2].probe_s)
    targets.append(
        Target(
            name=f"exposure sweep, {n:,} dropped ports, vs nmap -sS -T4",
            goal="measured in one run",
            measured=f"{nm_s / best:.0f} x faster ({secs(best)} vs {nm_text})",
            met=True,
        )
    )
    method = (
        "One host pair in namespaces (`ncbench-src` -> router `ncbench-rt` -> `ncbench-dst`). "
        f"Ports {cfg.lo}-{cfg.hi} ({n}): first all dropped by an nftables rule on the router, "
        f"then all but one in {cfg.open_every} ({len(open_ports)} ports, every other one "
        "sending a banner) dropped, with listeners on the destination. The floor: one raw "
        "SYN per port, all packets built before its clock starts, sent unpaced, replies read "
        "until the timeout after the last send. netcheck: `agent.probes.exposure.sweep` "
        "(what an `exposure` request runs) in SYN mode, the same timeout, banners read from "
        "the open ports. Medians of "
        f"{cfg.repeats} run(s), interleaved. nmap ran once, bounded at {cfg.nmap_bound_s:g} s, "
        "extrapolated from its own progress report when cut off."
    )
    return Section(
        title=f"Exposure sweep: {n} ports, one host pair",
        method=method,
        headers=(
            "case",
            "tool",
            "configuration",
            "probe wall (median)",
            "runs",
            "states per run",
            "vs floor",
            "faster than nmap",
        ),
        rows=tuple(rows),
        targets=tuple(targets),
    )
