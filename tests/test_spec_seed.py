"""topology.yaml and guest_os_matrix.yaml against the seed text: nothing dropped, nothing added.

The seed is parsed here on its own terms (its numbered interaction list and its matrix
lines), not through the product's loader, so a fact missing from the data fails a test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from netcheck.controller.spec import Spec, Support, load_spec

ROOT = Path(__file__).resolve().parents[1]
SEED_DIRS = [ROOT.parent / "shared" / "seeds", ROOT / "tests" / "data"]
SEED_NAME = "000_42ac02aada0d4818.txt"


def _seed() -> str:
    for d in SEED_DIRS:
        if (d / SEED_NAME).is_file():
            return (d / SEED_NAME).read_text(encoding="utf-8")
    pytest.skip(f"the seed {SEED_NAME} is not beside the repository (../shared/seeds)")


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(ROOT / "topology.yaml")


def _seed_interactions(text: str) -> dict[int, tuple[str, set[int]]]:
    """{id: (title, ports)} from the seed's "HDM - Component Interactions" list."""
    body = text.split("HDM - Component Interactions", 1)[1].split("Guest OS support Matrix")[0]
    out: dict[int, tuple[str, set[int]]] = {}
    current = 0
    for line in body.splitlines():
        head = re.match(r"^  (\d+)\. (.+)$", line)
        if head:
            current = int(head.group(1))
            out[current] = (head.group(2).strip(), set())
            continue
        ports = re.match(r"^\s+\d+\. Ports? - (.+)$", line)
        if ports and current:
            for lo, hi in re.findall(r"(\d+)(?:-(\d+))? \(TCP\)", ports.group(1)):
                out[current][1].update(range(int(lo), int(hi or lo) + 1))
    return out


def test_every_interaction_and_port_of_the_seed_is_in_the_spec(spec: Spec) -> None:
    seed = _seed_interactions(_seed())
    assert sorted(seed) == list(range(1, 16))
    assert [i.id for i in spec.interactions] == sorted(seed)
    for inter in spec.interactions:
        title, ports = seed[inter.id]
        ours = {p for f in inter.flows for p in f.port_range}
        assert ours == ports, f"interaction {inter.id}: ports differ from the seed"
        assert inter.title == title


def test_every_seed_port_number_is_covered(spec: Spec) -> None:
    wanted = {22, 443, 902, 2376, 3260, 9001, 9002, 32820, 32821, 32822}
    for lo in (5000, 6000, 7000, 8000, 12000):
        wanted.update(range(lo, lo + 11))
    ours = {p for ref in spec.flows() for p in ref.flow.port_range}
    assert ours == wanted


def test_reverse_flows_are_the_pushes_and_the_iscsi_boot(spec: Spec) -> None:
    reverse = {
        (ref.interaction.id, ref.flow.ports, ref.src_role, ref.dst_role)
        for ref in spec.flows()
        if ref.flow.direction == "reverse"
    }
    assert (4, "32820", "prem_manager", "pio") in reverse
    assert (10, "32820", "cloud_cache", "cloud_manager") in reverse
    assert (12, "3260", "cloud_vm", "cloud_cache") in reverse


def test_authentication_text_is_the_seed_text(spec: Spec) -> None:
    text = _seed()
    for inter in spec.interactions:
        assert f"Authentication - {inter.authentication}" in text
        if inter.authorization:
            assert f"Authorization - {inter.authorization}" in text


def _seed_matrix(text: str) -> list[str]:
    table = text.split("OS FAMILY", 1)[1].split("Legend:")[0]
    return [line.strip() for line in table.splitlines()[1:] if line.strip()]


def test_every_matrix_row_of_the_seed_is_in_the_matrix(spec: Spec) -> None:
    lines = _seed_matrix(_seed())
    assert len(lines) == 82 == len(spec.matrix)
    for line, row in zip(lines, spec.matrix, strict=True):
        cells = [row.support[c].text for c in row.support]
        family = "" if row.family == "Photon" else f"{row.family} "
        assert line == f"{family}{row.os} {row.boot} {' '.join(cells)}"


def test_matrix_statuses_keep_tickets_and_notes(spec: Spec) -> None:
    row = spec.matrix_row("SLES 12-SP5", "UEFI")
    assert row is not None
    assert row.support["vcs_warm"] == Support(
        status="not_qualified", text="Not Qualified(DP-2953)", ticket="DP-2953"
    )
    row = spec.matrix_row("Ubuntu Server 20.04", "MBR")
    assert row is not None and row.support["static_ip_vcd_cold"].note == "Need SI handling"
    row = spec.matrix_row("Photon OS 4", "UEFI Secure")
    assert row is not None and row.support["any_cold"].note == "No GOSC"
    row = spec.matrix_row("Windows 2008 R2", "UEFI")
    assert row is not None and row.support["any_cold"].status == "not_supported"


def test_warm_modes_need_iscsi_boot_and_guest_preparation(spec: Spec) -> None:
    for name in ("warm_vcd", "warm_vcs"):
        assert {12, 15} <= set(spec.modes[name].interactions)
    for name in ("cold_vcd", "cold_vcs", "deployment"):
        assert not {12, 15} & set(spec.modes[name].interactions)


def test_roles_say_where_an_agent_can_run(spec: Spec) -> None:
    no_agent = {r for r, role in spec.roles.items() if not role.agent}
    assert no_agent == {"prem_vcenter", "cloud_vcenter", "prem_esxi", "cloud_esxi"}
    assert spec.roles["cloud_manager"].site == "cloud"
    assert spec.roles["user"].site == "user"
