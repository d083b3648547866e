"""The per-VM gate from the guest's facts (issue 15, item 3): each prepare step of HDM that
would fail, per mode, with the matrix rows; the guest's OS over the inventory's; a VM with
no guest agent; the reports' VM readiness block."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from check_helpers import result_for
from guest_helpers import guest_facts
from guest_trees import guests

from netcheck.agent.guest.facts import collect
from netcheck.agent.guest.facts.base import Root
from netcheck.controller.evaluate import evaluate
from netcheck.controller.expand import expand, expected
from netcheck.controller.facts import GuestFacts
from netcheck.controller.gate import decision_to_dict, gate
from netcheck.controller.inventory import Inventory, load_inventory
from netcheck.controller.model import AgentSeen, Evaluation, GateDecision, Observed
from netcheck.controller.render import json_report, markdown
from netcheck.controller.spec import Spec, load_spec

REPO = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0
MiB = 1024 * 1024
SITE = """version: 1
site: readiness
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
  prem_vm:
    - {name: web-01, address: 198.18.1.101, os: "RHEL 7.4", boot: UEFI}
    - {name: old-01, address: 198.18.1.102, os: "RHEL 6.9", boot: MBR}
"""


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(REPO / "topology.yaml")


@pytest.fixture(scope="module")
def inv(spec: Spec, tmp_path_factory: pytest.TempPathFactory) -> Inventory:
    path = tmp_path_factory.mktemp("site") / "inventory.yaml"
    path.write_text(SITE)
    return load_inventory(path, spec)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """RHEL 7.4's tree as the guest agent reads it, booted UEFI without Secure Boot, with
    VMware tools running and DHCP: every prepare step ok."""
    g = guests()[0]
    root = g.write(tmp_path_factory.mktemp("rhel"))
    facts = collect(Root(str(root), proc=str(root / "no-proc"), kernel=g.kernel), user="hdm")
    return changed(
        facts,
        {"vmware_tools.running": True, "boot.matrix": "UEFI", "boot.secure_boot": False,
         "net.static_ip": False, "net.eth0.method": "dhcp"},
    )  # fmt: skip


def changed(facts: list[dict[str, Any]], values: dict[str, Any]) -> list[dict[str, Any]]:
    out = [{**f, "value": values[f["name"]]} if f["name"] in values else dict(f) for f in facts]
    return out


def evaluation(spec: Spec, inv: Inventory, facts: dict[str, GuestFacts]) -> Evaluation:
    results = [
        result_for(c, "open", started_at=NOW - 1, attempts=1, latency_s=None)
        for c in expand(spec, inv)
    ]
    agents = (AgentSeen("pio", "pio-1", "198.18.1.10", "connect", "1", NOW),)
    observed = Observed(tuple(results), agents=agents, guest_facts=facts)
    return evaluate(spec, expected(spec, inv), observed, NOW)


def vm_gate(
    spec: Spec, inv: Inventory, mode: str, facts: list[dict[str, Any]] | None
) -> GateDecision:
    reported = {"web-01": guest_facts("web-01", facts, NOW - 5)} if facts is not None else {}
    return gate(spec, inv, evaluation(spec, inv, reported), mode, "web-01")


MODES = ("cold_vcd", "cold_vcs", "warm_vcd", "warm_vcs")


@pytest.mark.parametrize("mode", MODES)
def test_a_healthy_guest_is_go_in_every_mode(
    spec: Spec, inv: Inventory, healthy: list[dict[str, Any]], mode: str
) -> None:
    d = vm_gate(spec, inv, mode, healthy)
    assert d.decision == "go", d.reasons
    assert [p.status for p in d.prepare] == ["ok"] * 7
    assert not [w for w in d.warnings if "prepare step" in w]


# (changed facts, step, status per mode (cold, warm), words of the reason or warning)
STEPS = [
    ({"vmware_tools.running": False}, 1, ("warns", "blocks"), "installed but not running"),
    ({"space.home_free_bytes": 10 * MiB}, 2, ("blocks", "blocks"), "the prepare tool needs"),
    ({"iscsi.package": False, "iscsi.iscsiadm": False}, 3, ("warns", "warns"),
     "HDM will install it (needs a package source)"),
    ({"iscsi.initrd_module": False}, 4, ("warns", "warns"), "HDM will add it"),
    ({"space.boot_free_bytes": 10 * MiB}, 4, ("blocks", "blocks"), "free in /boot"),
    ({"grub.kind": None, "grub.config": None}, 5, ("blocks", "blocks"), "no grub configuration"),
    ({"grub.mkconfig": None}, 6, ("warns", "warns"), "no grub2-mkconfig"),
]  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("values", "step", "statuses", "words"), STEPS)
def test_each_prepare_step_failing_per_mode(
    spec: Spec,
    inv: Inventory,
    healthy: list[dict[str, Any]],
    mode: str,
    values: dict[str, Any],
    step: int,
    statuses: tuple[str, str],
    words: str,
) -> None:
    d = vm_gate(spec, inv, mode, changed(healthy, values))
    status = statuses[1] if mode.startswith("warm") else statuses[0]
    found = [p for p in d.prepare if p.step == step and p.status == status]
    assert found and words in found[0].text, d.prepare
    texts = d.reasons if status == "blocks" else d.warnings
    assert any(f"prepare step {step} " in t and words in t for t in texts), texts
    assert d.decision == ("no-go" if status == "blocks" else "go")
    data = decision_to_dict(d)
    assert {"step": step, "status": status}.items() <= next(
        p for p in data["prepare"] if p["step"] == step and p["status"] == status
    ).items()


def test_the_guests_os_is_judged_and_the_inventory_cross_checked(
    spec: Spec, inv: Inventory, healthy: list[dict[str, Any]]
) -> None:
    """The inventory says RHEL 7.4 UEFI (qualified warm); the guest reports UEFI Secure Boot:
    VCD WARM is Not Supported for that row."""
    facts = changed(healthy, {"boot.matrix": "UEFI Secure", "boot.secure_boot": True})
    d = vm_gate(spec, inv, "warm_vcd", facts)
    assert d.decision == "no-go"
    assert "RHEL 7.4 UEFI Secure: Not Supported for warm_vcd (VCD WARM)" in d.reasons
    (cross,) = [w for w in d.warnings if "the inventory says" in w]
    assert "RHEL 7.4 UEFI" in cross and "RHEL 7.4 UEFI Secure" in cross
    assert "file:/sys/firmware/efi/efivars/SecureBoot-" in cross
    assert vm_gate(spec, inv, "cold_vcd", facts).decision == "go"


def test_a_static_ip_is_checked_against_the_static_ip_column(
    spec: Spec, inv: Inventory, healthy: list[dict[str, Any]]
) -> None:
    """Ubuntu Server 20.04 MBR: Guest Static IP for VCD Cold is "Qualified (Need SI handling)"."""
    ubuntu = {"os.name": "Ubuntu Server 20.04", "boot.matrix": "MBR"}
    dhcp = vm_gate(spec, inv, "cold_vcd", changed(healthy, ubuntu))
    static = vm_gate(spec, inv, "cold_vcd", changed(healthy, {**ubuntu, "net.static_ip": True}))
    column = "Guest Static IP for VCD Cold"
    assert not any(column in w for w in dhcp.warnings)
    assert any(column in w and "Need SI handling" in w for w in static.warnings)
    assert any("static_ip false, the guest reports a static IP" in w for w in static.warnings)


def test_a_vm_without_a_guest_agent(spec: Spec, inv: Inventory) -> None:
    d = vm_gate(spec, inv, "warm_vcd", None)
    assert {p.status for p in d.prepare} == {"unknown"}
    (note,) = [w for w in d.warnings if "no guest agent report" in w]
    assert "1 of its checks are covered from the appliance side" in note
    old = gate(spec, inv, evaluation(spec, inv, {}), "cold_vcd", "old-01")
    (note,) = [w for w in old.warnings if "no guest agent report" in w]
    assert "RHEL 6.9: Python 2.6 only" in note
    assert gate(spec, inv, evaluation(spec, inv, {}), "deployment", "web-01").prepare == ()


def test_the_reports_list_every_vms_readiness(
    spec: Spec, inv: Inventory, healthy: list[dict[str, Any]]
) -> None:
    facts = changed(healthy, {"vmware_tools.running": False})
    ev = evaluation(spec, inv, {"web-01": guest_facts("web-01", facts, NOW - 5)})
    gates = [gate(spec, inv, ev, m) for m in spec.modes]
    data = json_report.report_dict(spec, ev, gates)
    schema = json.loads((REPO / "controller/render/report.schema.json").read_text())
    jsonschema.validate(json.loads(json.dumps(data)), schema)
    vms = {v["host"]: v for v in data["vms"]}
    assert set(vms) == {"web-01", "old-01"}
    web, old = vms["web-01"], vms["old-01"]
    assert web["guest_agent"] and web["os"] == "RHEL 7.4" and web["unknown_facts"] == []
    warm = next(m for m in web["modes"] if m["mode"] == "warm_vcd")
    assert warm["blocks"] == 1 and warm["prepare"][0]["status"] == "blocks"
    assert not old["guest_agent"] and "vmware_tools.running" in old["unknown_facts"]
    assert old["checks_from_appliance_side"] == 1 and old["checks_from_guest"] == 0
    md = markdown.render(spec, ev, gates)
    assert "## VM readiness (2)" in md
    assert "warm_vcd: step 1 (VMware tools installed and running) blocks" in md
    assert "no guest agent report" in md


def test_old_facts_are_used_with_a_warning(
    spec: Spec, inv: Inventory, healthy: list[dict[str, Any]]
) -> None:
    limit = spec.policy.freshness_seconds
    fresh = {"web-01": guest_facts("web-01", healthy, NOW - limit + 1)}
    old = {"web-01": guest_facts("web-01", healthy, NOW - limit - 60)}
    d = gate(spec, inv, evaluation(spec, inv, fresh), "cold_vcd", "web-01")
    assert not [w for w in d.warnings if "facts are" in w]
    d = gate(spec, inv, evaluation(spec, inv, old), "cold_vcd", "web-01")
    assert d.decision == "go"
    assert any(f"facts are {limit + 60:,.0f} s old" in w for w in d.warnings), d.warnings
