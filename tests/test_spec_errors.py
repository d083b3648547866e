"""Each malformed input file gets its precise ``file:line: problem`` message, no traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from netcheck.controller.expand import expand
from netcheck.controller.inventory import load_inventory
from netcheck.controller.sourced import InputError
from netcheck.controller.spec import load_matrix, load_spec

ROOT = Path(__file__).resolve().parents[1]

TOPOLOGY_OK = """\
version: 1
matrix: matrix.yaml
roles:
  a: {name: A, site: on_prem, agent: true}
  b: {name: B, site: cloud, agent: false}
interactions:
  - id: 1
    title: A to B
    source: a
    destination: b
    flows:
      - ports: "443"
        service: https
modes:
  deploy:
    title: Deploy
    interactions: [1]
"""

MATRIX_OK = """\
version: 1
rows:
  - {family: RHEL, os: "RHEL 7.4", boot: UEFI, vcd_warm: "Qualified", vcs_warm: "Qualified",
     any_cold: "Qualified", static_ip_vcd_cold: "Qualified", static_ip_vcd_warm: "Qualified"}
"""

# (name, topology text, expected message: "line: text")
TOPOLOGY_CASES = [
    (
        "unknown top-level key",
        TOPOLOGY_OK + "extra: 1\n",
        "18: unknown key 'extra' in the document",
    ),
    (
        "unknown key in a role",
        TOPOLOGY_OK.replace("agent: false}", "agent: false, colour: red}"),
        "5: unknown key 'colour' in roles.b",
    ),
    (
        "unknown role in an interaction",
        TOPOLOGY_OK.replace("destination: b", "destination: c"),
        "10: interaction 1: unknown role 'c' (roles are: a, b)",
    ),
    (
        "port range backwards",
        TOPOLOGY_OK.replace('ports: "443"', 'ports: "8010-8000"'),
        "12: interactions.0.flows.0.ports: '8010-8000': the range runs backwards",
    ),
    (
        "port out of range",
        TOPOLOGY_OK.replace('ports: "443"', 'ports: "70000"'),
        "12: interactions.0.flows.0.ports: '70000': ports are 1-65535",
    ),
    (
        "port not a number",
        TOPOLOGY_OK.replace('ports: "443"', 'ports: "https"'),
        "12: interactions.0.flows.0.ports: 'https' is not a port or a range",
    ),
    (
        "duplicate interaction id",
        TOPOLOGY_OK.replace(
            "modes:",
            "  - id: 1\n    title: again\n    source: a\n    destination: b\n"
            '    flows:\n      - ports: "22"\nmodes:',
        ),
        "14: duplicate interaction id 1 (first at line 7)",
    ),
    (
        "overlapping ports",
        TOPOLOGY_OK.replace(
            "        service: https\n",
            '        service: https\n      - ports: "440-450"\n',
        ),
        "14: interaction 1: port 443 from a to b overlaps ports 443 of interaction 1",
    ),
    (
        "unknown service",
        TOPOLOGY_OK.replace("service: https", "service: gopher"),
        "13: interactions.0.flows.0.service: Input should be 'tcp', 'ssh'",
    ),
    (
        "unknown direction",
        TOPOLOGY_OK.replace("service: https", "service: https\n        direction: sideways"),
        "14: interactions.0.flows.0.direction: Input should be 'forward', 'reverse' or 'both'",
    ),
    (
        "direction both without a reason",
        TOPOLOGY_OK.replace("service: https", "service: https\n        direction: both"),
        "12: interaction 1, ports 443: direction both needs a 'reason' (why the spec does not "
        "say who connects)",
    ),
    (
        "a reason without direction both",
        TOPOLOGY_OK.replace("service: https", "service: https\n        reason: unsure"),
        "12: interaction 1, ports 443: 'reason' is only for direction both",
    ),
    (
        "direction both overlapping a reverse flow",
        TOPOLOGY_OK.replace(
            "service: https",
            "service: https\n        direction: both\n        reason: silent\n"
            '      - ports: "443"\n        direction: reverse',
        ),
        "16: interaction 1: port 443 from b to a overlaps ports 443 of interaction 1",
    ),
    (
        "mode names a missing interaction",
        TOPOLOGY_OK.replace("interactions: [1]", "interactions: [1, 7]"),
        "17: mode 'deploy' names interaction 7, which does not exist",
    ),
    (
        "missing key",
        TOPOLOGY_OK.replace("    title: A to B\n", ""),
        "7: missing key 'title' in interactions.0",
    ),
    (
        "duplicate key",
        TOPOLOGY_OK.replace("    title: A to B\n", "    title: A to B\n    title: again\n"),
        "9: duplicate key 'title'",
    ),
    (
        "YAML syntax error",
        TOPOLOGY_OK.replace("    title: A to B\n", "    title: [A to B\n"),
        "YAML syntax error",
    ),
    (
        "bad site",
        TOPOLOGY_OK.replace("site: cloud", "site: moon"),
        "5: roles.b.site: Input should be 'user', 'on_prem' or 'cloud'",
    ),
    ("empty file", "", "1: the file is empty"),
    # bounds (tests/test_input_bounds.py has the bombs, with time and memory limits)
    (
        "alias bomb",
        TOPOLOGY_OK
        + "x: &x [a, a, a, a, a, a, a, a, a, a]\n"
        + "".join(
            f"x{i}: &x{i} [{', '.join(['*x' + (str(i - 1) if i else '')] * 10)}]\n"
            for i in range(6)
        ),
        "23: the document expands to more than 200,000 nodes (at alias *x3)",
    ),
    (
        "recursive alias",
        TOPOLOGY_OK + "x: &x [*x]\n",
        "18: alias *x refers to a node that contains it",
    ),
    ("undefined alias", TOPOLOGY_OK + "x: *y\n", "18: alias *y names no anchor"),
    (
        "nested too deep",
        TOPOLOGY_OK + "x: " + "{a: " * 40 + "1" + "}" * 40 + "\n",
        "18: nested deeper than 32 levels",
    ),
    (
        "a value too long",
        TOPOLOGY_OK.replace("title: A to B", "title: " + "A" * 5000),
        "8: a value of 5,000 characters; the limit is 4,096",
    ),
    (
        "a title too long",
        TOPOLOGY_OK.replace("title: A to B", "title: " + "A" * 300),
        "8: interactions.0.title: String should have at most 200 characters",
    ),
    (
        "a bad date",
        TOPOLOGY_OK.replace("title: A to B", "title: 2024-13-01"),
        "8: '2024-13-01': month must be in 1..12",
    ),
    (
        "interaction id too large",
        TOPOLOGY_OK.replace("id: 1", "id: 9999999999"),
        "7: interactions.0.id: Input should be less than or equal to 1000000",
    ),
    (
        "too many ports over all flows",
        TOPOLOGY_OK.replace(
            '      - ports: "443"\n        service: https\n',
            "".join(
                f'      - ports: "1-65535"\n        direction: {d}\n'
                for d in ("forward", "reverse", "forward", "reverse", "forward")
            ),
        ),
        "20: interaction 1: ports 1-65535 bring the flows to more than 262,144 ports in all",
    ),
    (
        "plan cap out of range",
        TOPOLOGY_OK.replace("roles:", "policy:\n  max_checks_per_plan: 1000000\nroles:"),
        "4: policy.max_checks_per_plan: Input should be less than or equal to 100000",
    ),
]


def _write(tmp: Path, topology: str, matrix: str = MATRIX_OK) -> Path:
    (tmp / "matrix.yaml").write_text(matrix)
    path = tmp / "topology.yaml"
    path.write_text(topology)
    return path


@pytest.mark.parametrize(
    ("text", "message"), [c[1:] for c in TOPOLOGY_CASES], ids=[c[0] for c in TOPOLOGY_CASES]
)
def test_bad_topology_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_spec(path)
    assert f"{path}:" in str(info.value)
    assert message in str(info.value), str(info.value)


def test_the_good_topology_loads(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, TOPOLOGY_OK))
    assert [f.port_range for f in spec.interactions[0].flows] == [range(443, 444)]


MATRIX_CASES = [
    (
        "unknown status",
        MATRIX_OK.replace('vcd_warm: "Qualified"', 'vcd_warm: "Maybe"'),
        "3: vcd_warm: unknown status 'Maybe'",
    ),
    (
        "unknown boot mode",
        MATRIX_OK.replace("boot: UEFI", "boot: BIOS"),
        "3: rows.0.boot: Input should be 'MBR', 'UEFI' or 'UEFI Secure'",
    ),
    (
        "missing column",
        MATRIX_OK.replace('any_cold: "Qualified", ', ""),
        "3: missing key 'any_cold' in rows.0",
    ),
    (
        "duplicate row",
        MATRIX_OK + MATRIX_OK.split("rows:\n", 1)[1],
        "5: duplicate row for RHEL 7.4 UEFI (first at line 3)",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"), [c[1:] for c in MATRIX_CASES], ids=[c[0] for c in MATRIX_CASES]
)
def test_bad_matrix_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_matrix(path)
    assert f"{path}:{message}" in str(info.value), str(info.value)


INVENTORY_OK = """\
version: 1
site: lab
hosts:
  a:
    - {name: a1, address: 198.18.1.1}
  b:
    - {name: b1, address: 198.18.2.1, os: "RHEL 7.4", boot: UEFI}
"""

NETWORK_OK = """\
network:
  on_prem:
    - name: core-rt
      kind: router
      addresses: [198.18.1.254, 198.18.254.1]
    - name: edge-fw
      kind: firewall
      addresses: [198.18.9.1]
"""

INVENTORY_CASES = [
    (
        "unknown role",
        INVENTORY_OK.replace("  b:\n", "  z:\n"),
        "6: unknown role 'z' (roles are: a, b)",
    ),
    (
        "bad address",
        INVENTORY_OK.replace("198.18.1.1", "198.18.1.300"),
        "5: hosts.a.0.address: '198.18.1.300' is not an IP address",
    ),
    (
        "duplicate host",
        INVENTORY_OK.replace("name: b1", "name: a1"),
        "7: duplicate host name 'a1' (first at line 5)",
    ),
    (
        "os without boot mode",
        INVENTORY_OK.replace(", boot: UEFI", ""),
        "7: host 'b1': give both 'os' and 'boot', or neither",
    ),
    (
        "unknown key",
        INVENTORY_OK.replace("site: lab", "site: lab\nowner: me"),
        "3: unknown key 'owner' in the document",
    ),
    (
        "site name too long",
        INVENTORY_OK.replace("site: lab", "site: " + "l" * 201),
        "2: site: String should have at most 200 characters",
    ),
    (
        "address too long",
        INVENTORY_OK.replace("198.18.1.1", "f" * 65),
        "5: hosts.a.0.address: String should have at most 64 characters",
    ),
    (
        "network: unknown site",
        INVENTORY_OK + NETWORK_OK.replace("on_prem:", "moon:"),
        "9: network.moon",
    ),
    (
        "network: unknown device kind",
        INVENTORY_OK + NETWORK_OK.replace("kind: firewall", "kind: switch"),
        "14: network.on_prem.1.kind: Input should be 'router' or 'firewall'",
    ),
    (
        "network: bad address",
        INVENTORY_OK + NETWORK_OK.replace("198.18.254.1", "198.18.254.300"),
        "12: network.on_prem.0.addresses: '198.18.254.300' is not an IP address",
    ),
    (
        "network: duplicate device name",
        INVENTORY_OK + NETWORK_OK.replace("name: edge-fw", "name: core-rt"),
        "13: duplicate device name 'core-rt' (first at line 10)",
    ),
    (
        "network: an address given twice",
        INVENTORY_OK + NETWORK_OK.replace("198.18.9.1", "198.18.1.254"),
        "15: device 'edge-fw': address 198.18.1.254 is already given (first at line 12)",
    ),
    (
        "network: unknown key in a device",
        INVENTORY_OK + NETWORK_OK.replace("kind: router", "kind: router\n      vendor: x"),
        "12: unknown key 'vendor' in network.on_prem.0",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"), [c[1:] for c in INVENTORY_CASES], ids=[c[0] for c in INVENTORY_CASES]
)
def test_bad_inventory_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    spec = load_spec(_write(tmp_path, TOPOLOGY_OK))
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_inventory(path, spec)
    assert f"{path}:{message}" in str(info.value), str(info.value)


# (name, inventory text, its one warning: "line: text"). Facts of one VM the matrix does not
# know load: they are warnings, and only that VM's gate is undecided (tests/test_gate.py).
WARNING_CASES = [
    (
        "OS not in the matrix",
        INVENTORY_OK.replace("RHEL 7.4", "BeOS 5"),
        "7: host 'b1': BeOS 5 UEFI is not in the guest OS matrix (closest rows: RHEL 7.4 "
        "UEFI); its gate is undecided until the inventory names a row",
    ),
    (
        "boot mode not in the matrix",
        INVENTORY_OK.replace("boot: UEFI", "boot: MBR"),
        "7: host 'b1': RHEL 7.4 MBR is not in the guest OS matrix (closest rows: RHEL 7.4 UEFI)",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"), [c[1:] for c in WARNING_CASES], ids=[c[0] for c in WARNING_CASES]
)
def test_unknown_guest_facts_are_warnings(tmp_path: Path, text: str, message: str) -> None:
    spec = load_spec(_write(tmp_path, TOPOLOGY_OK))
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    inv = load_inventory(path, spec)
    assert len(inv.warnings) == 1
    assert inv.warnings[0].startswith(f"{path}:{message}"), inv.warnings


@pytest.mark.parametrize(
    ("os_name", "boot"),
    [("rhel 7.4", "uefi"), ("RHEL7.4", "UEFI"), ("Red Hat 7.4", "efi"), ("  RHEL  7.4 ", "Uefi")],
)
def test_matrix_names_match_without_case_spacing_or_aliases(
    tmp_path: Path, os_name: str, boot: str
) -> None:
    spec = load_spec(_write(tmp_path, TOPOLOGY_OK))
    path = tmp_path / "inventory.yaml"
    path.write_text(
        INVENTORY_OK.replace('os: "RHEL 7.4", boot: UEFI', f'os: "{os_name}", boot: "{boot}"')
    )
    inv = load_inventory(path, spec)
    assert inv.warnings == ()
    (host,) = inv.of_role("b")
    row = spec.matrix_row(host.os or "", host.boot or "")
    assert row is not None and (row.os, row.boot) == ("RHEL 7.4", "UEFI")


BOTH = TOPOLOGY_OK.replace(
    "service: https", "service: https\n        direction: both\n        reason: silent"
)

PIN_CASES = [
    (
        "pin: unknown interaction",
        "directions:\n  7: {ports: '443', from: a}\n",
        "9: no interaction 7 in the spec",
    ),
    (
        "pin: no flow of direction both on those ports",
        "directions:\n  1: {ports: '444', from: a}\n",
        "9: interaction 1 has no flow of direction both on ports 444 (its flows of direction "
        "both: 443)",
    ),
    (
        "pin: from a role of another interaction",
        "directions:\n  1: {ports: '443', from: c}\n",
        "9: interaction 1: 'from' is the connecting role, a or b, not 'c'",
    ),
    (
        "pin: pinned twice",
        "directions:\n  1:\n    - {ports: '443', from: a}\n    - {ports: '443', from: b}\n",
        "11: interaction 1, ports 443: pinned twice",
    ),
    (
        "pin: unknown key",
        "directions:\n  1: {ports: '443', by: a}\n",
        "9: unknown key 'by' in directions.1.0",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"), [c[1:] for c in PIN_CASES], ids=[c[0] for c in PIN_CASES]
)
def test_bad_direction_pins_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    spec = load_spec(_write(tmp_path, BOTH))
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY_OK + text)
    with pytest.raises(InputError) as info:
        load_inventory(path, spec)
    assert f"{path}:{message}" in str(info.value), str(info.value)


def test_a_pin_keeps_one_direction_of_a_both_flow(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, BOTH))
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY_OK)
    both = expand(spec, load_inventory(path, spec))
    assert sorted((c.src_host, c.spec.dst_host, c.direction_stated) for c in both) == [
        ("a1", "b1", False),
        ("b1", "a1", False),
    ]
    assert [c.direction for c in sorted(both, key=lambda c: c.src_host)] == ["forward", "reverse"]
    path.write_text(INVENTORY_OK + "directions:\n  1: {ports: 443, from: b}\n")
    (pinned,) = expand(spec, load_inventory(path, spec))
    assert (pinned.src_host, pinned.direction, pinned.direction_stated) == ("b1", "reverse", True)


def test_the_network_section_names_devices(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, TOPOLOGY_OK))
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY_OK + NETWORK_OK)
    inv = load_inventory(path, spec)
    assert inv.device_names() == {
        "198.18.1.254": "core-rt",
        "198.18.254.1": "core-rt",
        "198.18.9.1": "edge-fw",
    }


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netcheck.controller", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_command_prints_a_summary_of_the_shipped_spec() -> None:
    done = _cli("check", "topology.yaml", "--inventory", "inventory.example.yaml")
    assert done.returncode == 0, done.stderr
    assert "interactions: 15" in done.stdout
    assert "guest OS matrix: 82 rows" in done.stdout
    assert "expected checks:" in done.stdout


def test_check_command_refuses_a_bad_file_without_a_traceback(tmp_path: Path) -> None:
    shutil.copy(ROOT / "guest_os_matrix.yaml", tmp_path / "guest_os_matrix.yaml")
    bad = (
        (ROOT / "topology.yaml").read_text().replace("destination: prem_vcenter", "destination: vc")
    )
    (tmp_path / "topology.yaml").write_text(bad)
    done = _cli("check", str(tmp_path / "topology.yaml"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    line = next(
        n for n, text in enumerate(bad.splitlines(), 1) if text.strip() == "destination: vc"
    )
    assert f"topology.yaml:{line}: interaction 2: unknown role 'vc'" in done.stderr


def test_check_command_reports_a_missing_file() -> None:
    done = _cli("check", "no-such-file.yaml")
    assert done.returncode == 2  # cannot decide: the input cannot be read
    assert done.stderr == "no-such-file.yaml: cannot read: No such file or directory\n"


def test_multiline_yaml_keeps_lines(tmp_path: Path) -> None:
    text = textwrap.dedent(TOPOLOGY_OK).replace("agent: true}", "agent: maybe}")
    with pytest.raises(InputError) as info:
        load_spec(_write(tmp_path, text))
    assert ":4: roles.a.agent: Input should be a valid boolean" in str(info.value)
