"""``python -m bench [--quick] [--only SECTION ...]``: run the benchmarks, write the report."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import machine
from bench.report import Section, render

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("sweep", "exposure", "ingest", "footprint", "flood", "audit", "interconnect")


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 repeat, 1,000-port sweep, 20 s nmap bound, fewer agents",
    )
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    p.add_argument("--repeats", type=int, default=None, help="runs per figure (default 3)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for the reports")
    return p


def _runners(args: argparse.Namespace) -> dict[str, Callable[[], Section]]:
    from netcheck.controller.spec import load_spec

    spec = load_spec(str(Path(__file__).resolve().parent.parent / "topology.yaml"))
    repeats = args.repeats or (1 if args.quick else 3)

    def sweep() -> Section:
        from bench.sweep import SweepConfig, run_sweep

        cfg = (
            SweepConfig(5000, 5999, repeats, 20.0)
            if args.quick
            else SweepConfig(5000, 12010, repeats, 120.0)
        )
        return run_sweep(spec, cfg, _log)

    def ingest() -> Section:
        from bench.ingest import IngestConfig, run_ingest

        cfg = IngestConfig((20, 100) if args.quick else (100, 1000), repeats)
        return run_ingest(cfg, _log)

    def footprint() -> Section:
        from bench.footprint import FootprintConfig, run_footprint

        cfg = FootprintConfig(idle_s=2.0 if args.quick else 5.0, repeats=repeats)
        return run_footprint(spec, cfg, _log)

    def flood() -> Section:
        from bench.flood import run_flood_bench

        workdir = Path(tempfile.mkdtemp(prefix="netcheck-bench-flood-"))
        try:
            return run_flood_bench(workdir, repeats, _log, 2_000 if args.quick else 10_000)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def audit() -> Section:
        from bench.audit import AuditConfig, run_audit

        cfg = AuditConfig(repeats=repeats, nmap_bound_s=60.0 if args.quick else 180.0)
        return run_audit(spec, cfg, _log)

    def interconnect() -> Section:
        from bench.interconnect import InterconnectConfig, run_interconnect

        cfg = InterconnectConfig(repeats=repeats, seconds=2.0 if args.quick else 5.0)
        return run_interconnect(cfg, _log)

    def exposure() -> Section:
        from bench.exposure import ExposureConfig, run_exposure

        cfg = (
            ExposureConfig(repeats, lo=1, hi=10_000, nmap_bound_s=20.0)
            if args.quick
            else ExposureConfig(repeats)
        )
        return run_exposure(cfg, _log)

    return {
        "sweep": sweep,
        "exposure": exposure,
        "ingest": ingest,
        "footprint": footprint,
        "flood": flood,
        "audit": audit,
        "interconnect": interconnect,
    }


def _failed(name: str, exc: BaseException) -> Section:
    return Section(
        title=f"{name}: not measured",
        method=f"The section failed: `{type(exc).__name__}: {exc}`",
        headers=("",),
        rows=(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    facts = machine.facts()
    runners = _runners(args)
    sections: list[Section] = []
    ok = True
    for name in args.only or SECTIONS:
        _log(f"section {name}")
        try:
            sections.append(runners[name]())
        except Exception as exc:  # a failed section is reported, the others still run
            ok = False
            traceback.print_exc()
            sections.append(_failed(name, exc))
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    title = f"netcheck benchmarks, {stamp}" + (" (--quick)" if args.quick else "")
    text = render(title, facts, sections)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (args.out / f"{stamp}{suffix}.md").write_text(text)
    (args.out / "latest.md").write_text(text)
    (args.out / f"{stamp}{suffix}.json").write_text(
        json.dumps([s.__dict__ for s in sections], default=lambda o: o.__dict__, indent=1)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
