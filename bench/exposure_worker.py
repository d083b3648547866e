"""What runs in the source namespace for the exposure benchmark:
``python -m bench.exposure_worker KIND @ARGS_FILE``; prints one JSON line.

Kinds: ``sweep`` (netcheck's exposure sweep, agent.probes.exposure, in ``mode``);
``runner`` (the agent's probe runner for ``mode``, connect or syn, on a Plan file: the wide
sweep's SYN-mode row, bench/sweep.py); ``floor-syn``: the raw floor, one hand-built SYN per
port (all built before the clock starts), sent as fast as the socket takes them, then the
replies read until ``timeout_s`` after the last one; nothing else (no pacing, no retry, no
banner, no bookkeeping beyond one byte per port).
"""

from __future__ import annotations

import asyncio
import json
import random
import selectors
import socket
import sys
import time
from pathlib import Path
from typing import Any


def floor_syn(dst: str, lo: int, hi: int, timeout_s: float) -> dict[str, Any]:
    from netcheck.agent.probes import bpf, packets

    reserve = socket.socket()
    reserve.bind(("0.0.0.0", 0))
    sport = int(reserve.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((dst, 9))
        src = str(s.getsockname()[0])
    out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    tcp_in = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    bpf.attach(tcp_in, bpf.tcp_to_port(sport))
    tcp_in.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    seq = random.randrange(1 << 32)
    pkts = [packets.tcp_segment(src, dst, sport, p, seq, "S") for p in range(lo, hi + 1)]
    seen = bytearray(hi - lo + 1)
    sel = selectors.DefaultSelector()
    sel.register(tcp_in, selectors.EVENT_READ)

    def drain() -> None:
        while True:
            try:
                data = tcp_in.recv(128, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            r = packets.read_tcp(data)
            if r is not None and r.src == dst and lo <= r.sport <= hi:
                seen[r.sport - lo] = 1 if r.flags & 0x12 == 0x12 else 2

    t0 = time.monotonic()
    for pkt in pkts:
        while True:
            try:
                out.sendto(pkt, (dst, 0))
                break
            except OSError:  # ENOBUFS: the queue is full, read a little meanwhile
                drain()
                time.sleep(0.0005)
    sent = time.monotonic() - t0
    end = time.monotonic() + timeout_s
    while (left := end - time.monotonic()) > 0 and 0 in seen:
        sel.select(min(left, 0.05))
        drain()
    took = time.monotonic() - t0
    for s in (reserve, out, tcp_in):
        s.close()
    counts = {"open": seen.count(1), "refused": seen.count(2), "silent": seen.count(0)}
    return {"probe_s": took, "send_s": sent, "counts": counts}


def sweep(args: dict[str, Any]) -> dict[str, Any]:
    from netcheck.agent.probes.exposure import SweepOptions
    from netcheck.agent.probes.exposure import sweep as run
    from netcheck.agent.wire import CheckSpec, Plan

    dst = str(args["dst"])
    check = CheckSpec("9:src>dst:22", 9, "bench", "ncbench-dst", dst, 22, "tcp")
    plan = Plan("bench", "ncbench-src", str(args["src"]), (), (check,))
    opts = SweepOptions(
        first_port=int(args["lo"]),
        last_port=int(args["hi"]),
        rate=float(args["rate"]),
        concurrency=int(args.get("concurrency", 4096)),
        timeout_s=float(args["timeout_s"]),
        retries=int(args["retries"]),
    )
    t0 = time.monotonic()
    swept, found = asyncio.run(run(plan, opts, args["mode"], float(args.get("deadline_s", 600))))
    took = time.monotonic() - t0
    host = swept[0]
    counts = {
        "open": len(found),
        "silent": host.silent,
        "refused": host.ports - host.silent - len(found),
    }
    banners = sum(1 for p in found if p.banner)
    return {"probe_s": took, "counts": counts, "banners": banners, "complete": host.complete}


def runner(args: dict[str, Any]) -> dict[str, Any]:
    from collections import Counter

    from netcheck.agent.probes import RUNNERS
    from netcheck.agent.runner import options_for
    from netcheck.agent.wire import Plan, ProbeResult, decode

    plan = decode(Plan, json.loads(Path(args["plan"]).read_text()))
    opts = options_for(plan, service_checks=bool(args.get("service_checks", True)))

    async def go() -> list[ProbeResult]:
        return await RUNNERS[args["mode"]](plan.checks, opts, plan.concurrency)

    t0 = time.monotonic()
    results = asyncio.run(go())
    took = time.monotonic() - t0
    return {
        "probe_s": took,
        "counts": dict(Counter(r.state for r in results)),
        "errors": dict(Counter(r.error for r in results if r.state == "error").most_common(3)),
    }


def main(argv: list[str]) -> int:
    kind, raw = argv[0], argv[1]
    if raw.startswith("@"):
        raw = Path(raw[1:]).read_text()
    args: dict[str, Any] = json.loads(raw)
    if kind == "floor-syn":
        out = floor_syn(args["dst"], int(args["lo"]), int(args["hi"]), float(args["timeout_s"]))
    elif kind == "sweep":
        out = sweep(args)
    elif kind == "runner":
        out = runner(args)
    else:
        print(f"unknown kind {kind!r}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
