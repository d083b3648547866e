"""gate(): network checks of a mode, narrowed per VM, and the guest OS matrix."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection
from pathlib import Path

import pytest
from check_helpers import result_for

from netcheck.controller.evaluate import evaluate
from netcheck.controller.expand import expand, expected
from netcheck.controller.gate import GateError, decision_to_dict, gate
from netcheck.controller.inventory import Inventory, load_inventory
from netcheck.controller.model import AgentSeen, Evaluation, Observed
from netcheck.controller.render.gates import gate_headline
from netcheck.controller.spec import Spec, load_spec

REPO = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0

SITE = """version: 1
site: gate-test
hosts:
  user: [{name: admin-ws, address: 198.18.10.10}]
  pio: [{name: pio-1, address: 198.18.1.10}]
  prem_vcenter: [{name: prem-vc, address: 198.18.1.20}]
  prem_manager: [{name: prem-mgr, address: 198.18.1.30}]
  prem_esxi_manager: [{name: prem-esxi-mgr, address: 198.18.1.40}]
  prem_esxi: [{name: prem-esxi-1, address: 198.18.1.51}]
  cloud_vcenter: [{name: cloud-vc, address: 198.18.2.20}]
  cloud_manager: [{name: cloud-mgr, address: 198.18.2.30}]
  cloud_cache: [{name: cloud-cache, address: 198.18.2.40}]
  cloud_esxi: [{name: cloud-esxi-1, address: 198.18.2.51}]
  cloud_vm: [{name: cloud-vm-1, address: 198.18.2.101}]
  prem_vm:
    - {name: vm-qualified, address: 198.18.1.101, os: "RHEL 7.4", boot: UEFI, static_ip: true}
    - {name: vm-not-qualified, address: 198.18.1.102, os: "Ubuntu Server 18.04", boot: UEFI}
    - {name: vm-not-supported, address: 198.18.1.103, os: "Windows 2008 R2", boot: UEFI}
    - {name: vm-si, address: 198.18.1.104, os: "RHEL 7.2", boot: UEFI Secure, static_ip: true}
    - {name: vm-gosc, address: 198.18.1.105, os: "Photon OS 4", boot: UEFI Secure}
    - {name: vm-no-os, address: 198.18.1.106}
"""


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(REPO / "topology.yaml")


@pytest.fixture(scope="module")
def inv(spec: Spec, tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    path = tmp_path_factory.mktemp("site") / "inventory.yaml"
    path.write_text(SITE)
    return load_inventory(path, spec)


def all_open(spec: Spec, inv: Inventory, but: Collection[str] = ()) -> Evaluation:
    results = [
        result_for(
            c,
            "filtered" if c.spec.check_id in but else "open",
            started_at=NOW - 1,
            attempts=1,
            latency_s=None,
        )
        for c in expand(spec, inv)
    ]
    agents = (AgentSeen("pio", "pio-1", "198.18.1.10", "connect", "1", NOW),)
    return evaluate(spec, expected(spec, inv), Observed(tuple(results), agents=agents), NOW)


@pytest.mark.parametrize(
    ("vm", "mode", "decision", "reason", "warning"),
    [
        ("vm-qualified", "warm_vcd", "go", None, None),
        ("vm-not-qualified", "warm_vcd", "go", None, "Not Qualified, ticket CP-5956"),
        (
            "vm-not-supported",
            "warm_vcd",
            "no-go",
            "Windows 2008 R2 UEFI: Not Supported for warm_vcd (VCD WARM)",
            None,
        ),
        ("vm-si", "cold_vcd", "go", None, "Qualified with a note: Need SI handling"),
        ("vm-gosc", "cold_vcs", "go", None, "Qualified with a note: No GOSC"),
        ("vm-no-os", "warm_vcs", "go", None, "OS unknown, matrix not checked"),
    ],
)
def test_matrix(
    spec: Spec,
    inv: Inventory,
    vm: str,
    mode: str,
    decision: str,
    reason: str | None,
    warning: str | None,
) -> None:
    d = gate(spec, inv, all_open(spec, inv), mode, vm)
    assert d.decision == decision, d.reasons
    assert not d.blocking
    if reason:
        assert reason in d.reasons
    if warning:
        assert any(warning in w for w in d.warnings), d.warnings
        strict = dataclasses.replace(
            spec, policy=spec.policy.model_copy(update={"warnings_block": True})
        )
        assert gate(strict, inv, all_open(strict, inv), mode, vm).decision == "no-go"
    else:
        # a VM without a guest agent says so (issue 15); nothing else warns
        assert [w for w in d.warnings if "no guest agent report" not in w] == []


def test_static_ip_column_applies(spec: Spec, inv: Inventory) -> None:
    d = gate(spec, inv, all_open(spec, inv), "cold_vcd", "vm-si")
    assert [f.column for f in d.matrix] == ["any_cold", "static_ip_vcd_cold"]
    d = gate(spec, inv, all_open(spec, inv), "cold_vcs", "vm-si")
    assert [f.column for f in d.matrix] == ["any_cold"]


def test_failing_check_blocks_the_mode(spec: Spec, inv: Inventory) -> None:
    bad = "4:pio-1>prem-mgr:2376"
    d = gate(spec, inv, all_open(spec, inv, {bad}), "deployment")
    assert d.decision == "no-go"
    assert [r.check.spec.check_id for r in d.blocking] == [bad]
    assert d.reasons[0].startswith("interaction 4 (HDM PIO Appliance to HDM Prem Manager)")
    assert "1 failing" in d.reasons[0]
    # Interaction 9 (the interconnect) is not part of deployment.
    other = next(c.spec.check_id for c in expand(spec, inv) if c.spec.interaction == 9)
    assert gate(spec, inv, all_open(spec, inv, {other}), "deployment").decision == "go"


def test_nothing_tested_is_undecided(spec: Spec, inv: Inventory) -> None:
    ev = evaluate(spec, expected(spec, inv), Observed(), NOW)
    d = gate(spec, inv, ev, "deployment")
    assert d.decision == "undecided"
    assert d.reasons[0].startswith("none of the ") and "tested yet" in d.reasons[0]
    assert gate(spec, inv, ev, "warm_vcs", "vm-qualified").decision == "undecided"
    n = sum("deployment" in c.modes for c in expand(spec, inv))
    assert gate_headline(d) == (
        f"deployment: UNDECIDED (none of the {n} checks of mode 'deployment' tested yet)"
    )


def test_unknown_blocks(spec: Spec, inv: Inventory) -> None:
    """Some checks tested and passing, the others never: no-go, the untested ones block."""
    checks = [c for c in expand(spec, inv) if "deployment" in c.modes]
    results = [
        result_for(c, "open", started_at=NOW - 1, attempts=1, latency_s=None) for c in checks[:3]
    ]
    ev = evaluate(spec, expected(spec, inv), Observed(tuple(results)), NOW)
    d = gate(spec, inv, ev, "deployment")
    assert d.decision == "no-go"
    assert d.blocking and all(r.verdict == "unknown" for r in d.blocking)
    assert "unknown" in d.reasons[0]


def test_vm_scopes_to_its_own_checks_both_ways(spec: Spec, inv: Inventory) -> None:
    other_vm = "15:pio-1>vm-not-supported:443"
    ev = all_open(spec, inv, {other_vm})
    assert gate(spec, inv, ev, "warm_vcs", "vm-qualified").decision == "go"
    assert gate(spec, inv, ev, "warm_vcs").decision == "no-go"
    # Another VM role's checks do not count either (cloud-vm-1's interaction 12) ...
    cloud = next(c.spec.check_id for c in expand(spec, inv) if c.spec.dst_host == "cloud-vm-1")
    ev = all_open(spec, inv, {cloud})
    assert gate(spec, inv, ev, "warm_vcd", "vm-qualified").decision == "go"
    d = gate(spec, inv, ev, "warm_vcd", "cloud-vm-1")
    assert d.decision == "no-go"
    assert [r.check.spec.check_id for r in d.blocking] == [cloud]
    # ... while the site's infrastructure (no VM at either end) does: a VM moves through it.
    ev = all_open(spec, inv, {"4:pio-1>prem-mgr:22"})
    assert gate(spec, inv, ev, "warm_vcs", "vm-qualified").decision == "no-go"
    assert gate(spec, inv, ev, "cold_vcs", "vm-no-os").decision == "no-go"
    # With everything failing, a VM's gate blocks on its own checks and the infrastructure's,
    # none with another VM at an end.
    ev = all_open(spec, inv)
    everything_fails = all_open(spec, inv, {r.check.spec.check_id for r in ev.rows})
    vms = {h.name for role in ("prem_vm", "cloud_vm") for h in inv.of_role(role)}
    for vm in ("cloud-vm-1", "vm-qualified"):
        d = gate(spec, inv, everything_fails, "warm_vcd", vm)
        ends = [{r.check.src_host, r.check.spec.dst_host} & vms for r in d.blocking]
        assert all(e <= {vm} for e in ends)
        assert any(e == {vm} for e in ends) and any(not e for e in ends)


def test_unknown_os_makes_only_that_vm_undecided(spec: Spec, tmp_path: Path) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text(
        SITE.replace(
            "- {name: vm-no-os, address: 198.18.1.106}",
            '- {name: vm-2022, address: 198.18.1.106, os: "Windows Server 2022", boot: MBR}\n'
            '    - {name: vm-photon, address: 198.18.1.107, os: "Photon OS 4", boot: MBR}\n'
            '    - {name: vm-spelt, address: 198.18.1.108, os: "rhel 7.4", boot: uefi}',
        )
    )
    inv = load_inventory(path, spec)  # loads: two warnings, not an error
    assert [w.split(": ", 1)[1] for w in inv.warnings] == [
        "host 'vm-2022': Windows Server 2022 MBR is not in the guest OS matrix (closest rows: "
        "Windows Server 2012 R2 (64 bit) MBR; Windows Server 2019 (64 bit) MBR; Windows Server "
        "2016 (64 bit) MBR); its gate is undecided until the inventory names a row",
        "host 'vm-photon': Photon OS 4 MBR is not in the guest OS matrix (closest rows: Photon "
        "OS 2 MBR; Photon OS 4 UEFI; Photon OS 4 UEFI Secure); its gate is undecided until the "
        "inventory names a row",
    ]
    ev = all_open(spec, inv)
    for vm in ("vm-2022", "vm-photon"):
        d = gate(spec, inv, ev, "warm_vcs", vm)
        assert d.decision == "undecided"
        assert "is not in the guest OS matrix (closest rows: " in d.reasons[0]
        assert gate(spec, inv, ev, "cold_vcs", vm).decision == "undecided"
    # A failing check of that VM is a no-go whatever its OS; the others decide as before.
    failing = all_open(spec, inv, {"15:pio-1>vm-2022:443"})
    d = gate(spec, inv, failing, "warm_vcs", "vm-2022")
    assert d.decision == "no-go"
    assert any("not in the guest OS matrix" in w for w in d.warnings)
    assert gate(spec, inv, ev, "warm_vcs", "vm-spelt").decision == "go"
    assert gate(spec, inv, ev, "warm_vcs", "vm-qualified").decision == "go"
    assert gate(spec, inv, ev, "warm_vcd", "vm-not-supported").decision == "no-go"
    assert gate(spec, inv, ev, "warm_vcs").decision == "go"


def test_unchecked_interaction_warns(spec: Spec, tmp_path: Path) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text(SITE.replace("  cloud_vm: [{name: cloud-vm-1, address: 198.18.2.101}]\n", ""))
    inv = load_inventory(path, spec)
    d = gate(spec, inv, all_open(spec, inv), "warm_vcd")
    assert d.decision == "go"
    assert any("interaction 12" in w and "no cloud_vm hosts" in w for w in d.warnings)


def test_errors_and_json(spec: Spec, inv: Inventory) -> None:
    ev = all_open(spec, inv, {"4:pio-1>prem-mgr:22"})
    with pytest.raises(GateError, match="unknown mode"):
        gate(spec, inv, ev, "hot")
    with pytest.raises(GateError, match="unknown VM"):
        gate(spec, inv, ev, "cold_vcd", "nope")
    with pytest.raises(GateError, match=r"not a guest VM \(VMs are the hosts of roles prem_vm"):
        gate(spec, inv, ev, "cold_vcd", "pio-1")
    data = json.loads(json.dumps(decision_to_dict(gate(spec, inv, ev, "cold_vcd", "vm-si"))))
    assert data["decision"] == "no-go"
    assert data["blocking"][0]["check_id"] == "4:pio-1>prem-mgr:22"
    assert data["matrix"][1]["text"] == "Qualified (Need SI handling)"
    ev = all_open(spec, inv, {"15:pio-1>vm-si:443"})
    data = json.loads(json.dumps(decision_to_dict(gate(spec, inv, ev, "warm_vcs", "vm-si"), ev)))
    assert data["decision"] == "no-go"
    assert data["blocking"][0]["check_id"] == "15:pio-1>vm-si:443"
    assert data["blocking"][0]["cause"] == "dropped"


def test_empty_inventory_is_undecided(spec: Spec, tmp_path: Path) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text("version: 1\nhosts:\n  pio: [{name: pio-1, address: 198.18.1.10}]\n")
    inv = load_inventory(path, spec)
    d = gate(spec, inv, evaluate(spec, expected(spec, inv), Observed(), NOW), "cold_vcd")
    assert d.decision == "undecided"
