"""Where the spec does not say who connects (direction: both): both ways are probed, both
must pass for the gate, the ticket and the report say "direction not stated by the spec",
and a site's pin in its inventory keeps one way."""

from __future__ import annotations

import json
from pathlib import Path

from render_helpers import load, make_evaluation

from netcheck.agent.wire import check_id
from netcheck.controller.expand import expand, listen_specs
from netcheck.controller.gate import gate
from netcheck.controller.inventory import load_inventory
from netcheck.controller.render import render_report

REPO = Path(__file__).resolve().parent.parent
# interaction 12, 9001: the VM connecting to the Cloud Cache (the other way from the title)
VM_TO_CACHE = check_id(12, "cloud-vm-1", "cloud-cache", 9001)
CACHE_TO_VM = check_id(12, "cloud-cache", "cloud-vm-1", 9001)


def test_both_ways_are_checks_and_both_ends_listen() -> None:
    spec, inv = load()
    checks = {c.spec.check_id: c for c in expand(spec, inv)}
    assert checks[VM_TO_CACHE].direction == "reverse"
    assert checks[CACHE_TO_VM].direction == "forward"
    assert not checks[VM_TO_CACHE].direction_stated and not checks[CACHE_TO_VM].direction_stated
    # interaction 10's data ports run both ways too; 32820 (stated: Cache -> Manager) one way
    ten = {(c.src_role, c.spec.port) for c in checks.values() if c.spec.interaction == 10}
    assert {("cloud_cache", 5000), ("cloud_manager", 5000), ("cloud_cache", 12010)} <= ten
    assert ("cloud_manager", 32820) not in ten
    for role in ("cloud_cache", "cloud_vm"):
        assert 9001 in {x.port for x in listen_specs(spec, role)}


def test_the_gate_needs_both_ways_until_pinned(tmp_path: Path) -> None:
    spec, inv = load()
    ev = make_evaluation(spec, inv, states={VM_TO_CACHE: "filtered"})
    decision = gate(spec, inv, ev, "warm_vcd")
    assert decision.decision == "no-go"
    assert [r.check.spec.check_id for r in decision.blocking] == [VM_TO_CACHE]
    md = render_report(spec, ev, [decision], "markdown")
    row = next(x for x in md.splitlines() if "198.18.2.101 -> 198.18.2.40:9001" in x)
    assert "(direction not stated by the spec)" in row
    rule = next(x for x in md.splitlines() if x.startswith("| allow TCP 198.18.2.101"))
    assert "12: HDM Cloud Cache to Virtual machines" in rule
    assert "direction not stated by the spec" in rule
    data = json.loads(render_report(spec, ev, [decision], "json"))
    (r,) = data["rules"]
    assert (r["src_host"], r["dst_host"], r["ports"]) == ("cloud-vm-1", "cloud-cache", "9001")
    assert (r["direction"], r["direction_stated"]) == ("reverse", False)
    flow = next(f for f in data["interactions"][11]["flows"] if f["ports"] == "9001-9002")
    assert flow["direction"] == "both" and "without saying who connects" in flow["reason"]
    # the site knows the Cloud Cache connects: the VM -> Cache way is no longer a check
    pinned = tmp_path / "inventory.yaml"
    pinned.write_text(
        (REPO / "inventory.example.yaml").read_text()
        + 'directions:\n  12: {ports: "9001-9002", from: cloud_cache}\n'
    )
    site = load_inventory(pinned, spec)
    ev2 = make_evaluation(spec, site, states={VM_TO_CACHE: "filtered"})
    assert VM_TO_CACHE not in {r.check.spec.check_id for r in ev2.rows}
    kept = next(r for r in ev2.rows if r.check.spec.check_id == CACHE_TO_VM)
    assert kept.check.direction_stated and kept.verdict == "pass"
    assert gate(spec, site, ev2, "warm_vcd").decision == "go"
