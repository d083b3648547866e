"""What runs inside a source namespace: ``python -m bench.worker KIND ARGS_JSON|@FILE``.

Prints one JSON line: the measured wall time of the probing itself (``probe_s``, from the
first connect to the last verdict, interpreter start-up excluded) and the states found.
Kinds: ``runner`` (netcheck's agent runner on a Plan file), ``floor-asyncio``,
``floor-selectors``, ``blackbox`` (concurrent /probe requests to a blackbox_exporter).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.floor import asyncio_floor, selectors_floor


def _runner(args: dict[str, Any]) -> dict[str, Any]:
    from netcheck.agent.probes.connect import run as run_connect
    from netcheck.agent.runner import options_for
    from netcheck.agent.wire import Plan, decode

    plan = decode(Plan, json.loads(Path(args["plan"]).read_text()))
    opts = options_for(plan, service_checks=bool(args.get("service_checks", True)))
    t0 = time.monotonic()
    results = asyncio.run(run_connect(plan.checks, opts, plan.concurrency))
    took = time.monotonic() - t0
    return {
        "probe_s": took,
        "states": {r.check_id: r.state for r in results},
        "counts": dict(Counter(r.state for r in results)),
        "errors": dict(Counter(r.error for r in results if r.state == "error").most_common(3)),
    }


def _targets(args: dict[str, Any]) -> list[tuple[str, int]]:
    return [(str(a), int(p)) for a, p in args["targets"]]


def _floor(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    targets = _targets(args)
    t0 = time.monotonic()
    if kind == "floor-asyncio":
        states = asyncio.run(asyncio_floor(targets, float(args["timeout_s"])))
    else:
        states = selectors_floor(targets, float(args["timeout_s"]))
    took = time.monotonic() - t0
    return {
        "probe_s": took,
        "states": {f"{a}:{p}": s for (a, p), s in zip(targets, states, strict=True)},
        "counts": dict(Counter(states)),
    }


async def _blackbox(args: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    targets = _targets(args)
    base = str(args["exporter"])
    module = str(args["module"])
    states: dict[str, str] = {}
    timeout = aiohttp.ClientTimeout(total=float(args["timeout_s"]) + 5.0)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:

        async def one(addr: str, port: int) -> None:
            params = {"target": f"{addr}:{port}", "module": module}
            async with session.get(base + "/probe", params=params) as resp:
                text = await resp.text()
            ok = any(
                line.startswith("probe_success ") and line.split()[-1] == "1"
                for line in text.splitlines()
            )
            states[f"{addr}:{port}"] = "open" if ok else "not-open"

        t0 = time.monotonic()
        await asyncio.gather(*(one(a, p) for a, p in targets))
        took = time.monotonic() - t0
    return {"probe_s": took, "states": states, "counts": dict(Counter(states.values()))}


def main(argv: list[str]) -> int:
    kind, raw = argv[0], argv[1]
    if raw.startswith("@"):
        raw = Path(raw[1:]).read_text()
    args: dict[str, Any] = json.loads(raw)
    if kind == "runner":
        out = _runner(args)
    elif kind in ("floor-asyncio", "floor-selectors"):
        out = _floor(kind, args)
    elif kind == "blackbox":
        out = asyncio.run(_blackbox(args))
    else:
        print(f"unknown worker kind {kind!r}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
