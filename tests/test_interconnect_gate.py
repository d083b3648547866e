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


def test_reports_show_each_path_against_its_thresholds(tmp_path: Path) -> None:
    import jsonschema

    from netcheck.controller.render import json_report, render_report

    spec = load_spec(ROOT / "topology.yaml")
    inv = load_inventory(ROOT / "inventory.example.yaml", spec)
    pm, cm = inv.of_role("prem_manager")[0], inv.of_role("cloud_manager")[0]
    db = tmp_path / "store.db"
    store = Store.open(db)
    now = time.time()
    slow = PathMeasurement(9, pm.name, cm.name, cm.address, 6000, now - 5, mtu=1400,
                           route_mtu=1500, icmp=True, rtt_avg_s=0.0123, loss=0.0,
                           up_mbit_s=640.0, down_mbit_s=1210.0, throughput_streams=11)  # fmt: skip
    _store_report(db, pm.name, [slow], now - 5)
    try:
        ev = evaluate(spec, expected(spec, inv), store.snapshot(now), now)
    finally:
        store.close()
    gates = [gate(spec, inv, ev, "cold_vcd")]
    data = json.loads(json_report.render(spec, ev, gates))
    schema = json.loads((ROOT / "controller/render/report.schema.json").read_text())
    jsonschema.validate(data, schema)
    (nine,) = [p for p in data["paths"] if p["interaction"] == 9]
    assert nine["verdict"] == "fail" and nine["measured"]["up_mbit_s"] == 640.0
    up = next(f for f in nine["figures"] if f["figure"] == "throughput_up")
    assert up["margin"] == -360.0 and up["ok"] is False
    assert up["text"] == "throughput_up 640 Mbit/s, 360 Mbit/s below the 1000 Mbit/s threshold"
    assert all(p["verdict"] == "unknown" and p["measured"] is None
               for p in data["paths"] if p["interaction"] != 9)  # fmt: skip
    md = render_report(spec, ev, gates, "markdown")
    assert "## Interconnect qualification (" in md
    section = md[md.index("## Interconnect qualification (") :]
    row = next(line for line in section.splitlines() if line.startswith(f"| 9 | {pm.name} |"))
    assert "1400 bytes (+120 bytes)" in row and "12.3 ms (+17.7 ms)" in row
    assert "640 Mbit/s (-360 Mbit/s FAIL)" in row and "1210 Mbit/s (+210 Mbit/s)" in row
