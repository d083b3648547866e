"""A done interconnect request in a real store file reaches evaluation and the mode's gate."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from netcheck.agent.wire import PathMeasurement, RequestReport, encode
from netcheck.controller.evaluate import evaluate
from netcheck.controller.expand import expected
from netcheck.controller.gate import gate
from netcheck.controller.inventory import load_inventory
from netcheck.controller.spec import load_spec
from netcheck.controller.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _store_report(db: Path, host: str, paths: list[PathMeasurement], at: float) -> None:
    rep = RequestReport(f"r-{host}-{at}", "interconnect", "done", at, "ok", paths=tuple(paths))
    with sqlite3.connect(db) as c:
        c.execute(
            "INSERT INTO requests (id, kind, role, host, params, created_at, deadline, state, "
            "updated_at, report) VALUES (?, 'interconnect', 'prem_manager', ?, '[]', ?, ?, "
            "'done', ?, ?)",
            (rep.id, host, at, at + 900, at, json.dumps(encode(rep))),
        )


def test_a_measured_black_hole_on_the_interconnect_blocks_the_cold_gate(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "topology.yaml")
    inv = load_inventory(ROOT / "inventory.example.yaml", spec)
    pm = inv.of_role("prem_manager")[0]
    cm = inv.of_role("cloud_manager")[0]
    db = tmp_path / "store.db"
    store = Store.open(db)
    now = time.time()
    try:
        before = evaluate(spec, expected(spec, inv), store.snapshot(now), now)
        nine = [p for p in before.paths if p.interaction == 9]
        assert [(p.src_host, p.dst_host, p.verdict) for p in nine] == [
            (pm.name, cm.name, "unknown")
        ]
        assert not any("interconnect" in r for r in gate(spec, inv, before, "cold_vcd").reasons)
        hole = PathMeasurement(9, pm.name, cm.name, cm.address, 6000, now - 5, mtu=1400,
                               route_mtu=1500, icmp=False, black_hole=True, rtt_avg_s=0.012,
                               loss=0.0)  # fmt: skip
        _store_report(db, pm.name, [hole], now - 5)
        ev = evaluate(spec, expected(spec, inv), store.snapshot(now), now)
    finally:
        store.close()
    (p,) = [p for p in ev.paths if p.interaction == 9]
    assert p.verdict == "fail" and "black hole" in p.reason
    mtu = p.figure("mtu")
    assert mtu is not None and mtu.value == 1400 and mtu.margin == 120
    d = gate(spec, inv, ev, "cold_vcd")
    assert d.decision == "no-go"
    assert any(r.startswith(f"interconnect not qualified: interaction 9 {pm.name} -> {cm.name}")
               for r in d.reasons)  # fmt: skip
    # the deployment mode does not include interaction 9: not its concern
    dep = gate(spec, inv, ev, "deployment")
    assert not any("interconnect" in r for r in (*dep.reasons, *dep.warnings))
