"""``python -m bench.history_store``: what history costs the store's writer, in process.

The ingest section's churn load (1,000 PIO agents x 60 checks, every round half the checks
change state: ``batch_body(..., churn=True)``) and a steady one (every check open every
round), written with :meth:`Store.ingest_group` in groups of 300 batches (18,000 results,
below the writer's ``GROUP_RESULTS``) to a real SQLite file (WAL, synchronous=FULL), with
history off (:meth:`Store.set_expected`: ids only) and on (:meth:`Store.expect`),
alternately in the same process. Figures are results per second of the writer thread's CPU
time (``process_time``: the store runs in this one thread), so other load on the machine
moves them less than wall time; each round separately (round 1: every check is new).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from bench.cmd import REPO
from bench.ingest import inventory_with_agents
from netcheck.agent.wire import ProbeResult, ProbeState, ResultBatch
from netcheck.controller.expand import Expected, ExpectedCheck, expected
from netcheck.controller.inventory import load_inventory
from netcheck.controller.spec import load_spec
from netcheck.controller.store import SentBatch, Store, sent

T0 = 1_800_000_000.0
GROUP_BATCHES = 300


def _site(agents: int, work: Path) -> Expected:
    spec = load_spec(REPO / "topology.yaml")
    (work / "inventory.yaml").write_text(yaml.safe_dump(inventory_with_agents(agents)))
    return expected(spec, load_inventory(work / "inventory.yaml", spec))


def _batches(by_host: dict[str, list[ExpectedCheck]], r: int, flapping: bool) -> list[SentBatch]:
    t = T0 + r * 10
    out = []
    for host, checks in by_host.items():
        results = []
        for k, c in enumerate(checks):
            state: ProbeState = "open" if not flapping or (k + r) % 4 else "filtered"
            results.append(
                ProbeResult(
                    c.spec.check_id,
                    c.spec.interaction,
                    host,
                    c.src_address,
                    c.spec.dst_host,
                    c.spec.dst_address,
                    c.spec.port,
                    state,
                    "connect",
                    1,
                    t,
                    0.0004,
                )
            )
        out.append(sent(ResultBatch("pio", host, results=tuple(results), sent_at=t), "token"))
    return out


def run(exp: Expected, history: bool, flapping: bool, rounds: int, work: Path) -> list[float]:
    """Results per CPU second of each round."""
    by_host: dict[str, list[ExpectedCheck]] = {}
    for c in exp.checks:
        if c.src_role == "pio":
            by_host.setdefault(c.src_host, []).append(c)
    db = Path(tempfile.mkdtemp(dir=work)) / "store.sqlite"
    store = Store.open(db, background_checkpoints=True)
    try:
        if history:
            store.expect(exp.checks)
        else:
            store.set_expected(c.spec.check_id for c in exp.checks)
        rates = []
        for r in range(rounds):
            batches = _batches(by_host, r, flapping)
            n = sum(len(b.results) for b in batches)
            start = time.process_time()
            for i in range(0, len(batches), GROUP_BATCHES):
                store.ingest_group(batches[i : i + GROUP_BATCHES], T0 + r * 10 + 1)
            rates.append(n / (time.process_time() - start))
            store.checkpoint()
        return rates
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.history_store", description=__doc__)
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="netcheck-bench-history-") as tmp:
        work = Path(tmp)
        exp = _site(args.agents, work)
        for flapping in (True, False):
            load = "flapping (half the checks change each round)" if flapping else "steady"
            print(f"{load}: results per CPU second, rounds 1..{args.rounds}")
            for _ in range(args.repeats):
                for history in (False, True):
                    rates = run(exp, history, flapping, args.rounds, work)
                    label = "history on " if history else "history off"
                    print(f"  {label} " + " ".join(f"{x:>9,.0f}" for x in rates), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
