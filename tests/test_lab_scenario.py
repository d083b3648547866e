"""The lab's layout and firewall scenarios: pure parts, no root needed."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from deploy.lab.layout import Layout, build_layout, inventory_yaml
from deploy.lab.nftables import host_ruleset, router_ruleset
from deploy.lab.scenario import (
    UnknownScenario,
    load_scenario,
    looks_like_path,
    parse_ports,
    scenario_path,
    shipped,
)
from netcheck.controller.expand import expand
from netcheck.controller.inventory import load_inventory
from netcheck.controller.sourced import InputError
from netcheck.controller.spec import Spec, load_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(REPO / "topology.yaml")


@pytest.fixture(scope="module")
def layout(spec: Spec) -> Layout:
    return build_layout({n: (r.site, r.agent) for n, r in spec.roles.items()})


def test_layout_addresses_are_benchmark_space_and_unique(layout: Layout) -> None:
    bench = ipaddress.ip_network("198.18.0.0/15")
    addrs = [h.address for h in layout.hosts] + [h.mgmt_address for h in layout.hosts]
    assert len(set(addrs)) == len(addrs)
    assert all(ipaddress.ip_address(a) in bench for a in addrs)
    assert len({h.netns for h in layout.hosts}) == len(layout.hosts)
    for role in ("prem_esxi", "cloud_esxi", "cloud_vm", "prem_vm"):
        assert len(layout.of_role(role)) == 2
    assert len(layout.of_role("pio")) == 1


def test_generated_inventory_loads_and_expands(spec: Spec, layout: Layout, tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(inventory_yaml(layout))
    inv = load_inventory(path, spec)
    checks = expand(spec, inv)
    # interaction 11: prem_esxi_manager -> each of the two ESXi hosts on 902, 32821, 32822
    eleven = [c for c in checks if c.spec.interaction == 11]
    assert {c.spec.dst_host for c in eleven} == {"prem-esxi-1", "prem-esxi-2"}
    assert len(eleven) == 6


def test_shipped_scenarios_load(spec: Spec, layout: Layout) -> None:
    assert {"clean", "audit", "diagnosis"} <= set(shipped())
    assert load_scenario("clean", spec, layout).blocks == ()
    audit = load_scenario("audit", spec, layout)
    actions = {b.action for b in audit.blocks}
    assert actions == {"drop", "reset", "prohibit"}
    # the whole 6000-6010 range across the interconnect, applied at the cloud router (`at`)
    ic = [b for b in audit.blocks if b.ports == tuple(range(6000, 6011))]
    assert len(ic) == 1 and ic[0].router == "cloud" and ic[0].action == "drop"
    # the reverse-direction push: cloud cache -> cloud manager, at the cloud router
    push = [b for b in audit.blocks if b.ports == (32820,)]
    cache = layout.of_role("cloud_cache")[0].address
    mgr = layout.of_role("cloud_manager")[0].address
    assert [(b.src, b.dst, b.router) for b in push] == [((cache,), (mgr,), "cloud")]


def test_nft_ruleset_text(spec: Spec, layout: Layout) -> None:
    audit = load_scenario("audit", spec, layout)
    prem = router_ruleset(audit.blocks, "prem")
    cloud = router_ruleset(audit.blocks, "cloud")
    assert "tcp dport { 6000-6010 } counter drop" in cloud
    assert "reject with icmp type admin-prohibited" in prem
    assert "reject with tcp reset" in cloud and "6000-6010" not in prem
    assert prem.startswith("table inet nclab\ndelete table inet nclab\n")
    assert "postrouting" not in prem + cloud  # no NAT in the audit
    assert load_scenario("audit", spec, layout).icmp_ratelimit == "off"


def test_diagnosis_scenario_has_every_kind_of_enforcement(spec: Spec, layout: Layout) -> None:
    diag = load_scenario("diagnosis", spec, layout)
    assert diag.icmp_ratelimit == "kernel-default"
    kinds = {(b.router == "host", b.action) for b in diag.blocks}
    assert kinds == {
        (False, "drop"), (True, "drop"), (False, "reset"), (True, "reset"),
        (False, "prohibit"), (True, "prohibit"), (False, "host-unreachable"),
    }  # fmt: skip
    prem, cloud = (router_ruleset(diag.blocks, r, diag.nat) for r in ("prem", "cloud"))
    assert "counter reject with icmp type host-unreachable" in prem
    assert "type nat hook postrouting priority srcnat;" in prem and "postrouting" not in cloud
    assert "tcp dport { 7008 } counter masquerade" in prem
    assert "tcp dport { 8001 } counter snat ip to 198.18.1.250" in prem
    # a host's own rules go into its input chain, aimed at its own address only
    mgr = layout.of_role("prem_manager")[0]
    own = diag.host_blocks(mgr.address)
    assert [(b.ports, b.action, b.dst) for b in own] == [((5003,), "drop", (mgr.address,))]
    text = host_ruleset(own)
    assert "type filter hook input priority filter;" in text and "forward" not in text
    assert "tcp dport { 5003 } counter drop" in text
    assert "5003" not in prem + cloud
    assert diag.host_blocks(layout.of_role("pio")[0].address) == ()


def test_parse_ports() -> None:
    assert parse_ports("22, 443,8000-8002") == (22, 443, 8000, 8001, 8002)
    with pytest.raises(ValueError):
        parse_ports("10-5")


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ("version: 1\nrules:\n  - interaction: 9\n    action: explode\n", 4, "action"),
        ("version: 1\nrules:\n  - interaction: 9\n    action: drop\n    colour: red\n", 5,
         "unknown key 'colour'"),
        ("version: 1\nrules:\n  - interaction: 99\n    action: drop\n", 3, "no interaction 99"),
        ("version: 1\nrules:\n  - src: pio\n    dst: nobody\n    ports: 22\n    action: drop\n",
         4, "unknown role 'nobody'"),
        ("version: 1\nrules:\n  - interaction: 9\n    ports: 9999\n    action: drop\n", 3,
         "matches no flow"),
        ("version: 1\nrules:\n  - src: pio\n    dst: prem_manager\n    action: drop\n", 3,
         "needs 'interaction'"),
        ("version: 1\nrules:\n  - interaction: 11\n    dst_host: esx-9\n    action: drop\n", 4,
         "no lab host 'esx-9'"),
        ("version: 1\nrules:\n  - interaction: 9\n    ports: 70000\n    action: drop\n", 4,
         "ports are 1-65535"),
        ("version: 1\nrules: [\n", 3, "YAML syntax error"),
        ("version: 1\nrules:\n  - interaction: 9\n    action: drop\n    at: vm\n", 5, "'prem', "
         "'cloud' or 'host'"),
        ("version: 1\nicmp_ratelimit: on\n", 2, "'off' or 'kernel-default'"),
        ("version: 1\nnat:\n  - interaction: 9\n    ports: 7008\n", 3, "exactly one of"),
        ("version: 1\nnat:\n  - interaction: 9\n    masquerade: true\n    snat: 198.18.1.250\n",
         3, "exactly one of"),
        ("version: 1\nnat:\n  - interaction: 9\n    snat: 127.0.0.9\n", 4, "lab addresses are from "
         "198.18.0.0/15"),
        ("version: 1\nnat:\n  - interaction: 9\n    snat: 198.18.2.250\n", 4, "replies must come "
         "back to the prem router"),
        ("version: 1\nnat:\n  - interaction: 9\n    snat: 198.18.1.30\n", 4, "a lab host or "
         "router"),
        ("version: 1\nnat:\n  - interaction: 9\n    snat: 198.18.1.999\n", 4, "IPv4"),
        ("version: 1\nnat:\n  - interaction: 9\n    masquerade: true\n    at: host\n", 5, "'prem' "
         "or 'cloud'"),
        ("version: 1\nnat:\n  - interaction: 99\n    masquerade: true\n", 3, "no interaction 99"),
    ],
)  # fmt: skip
def test_scenario_errors_name_file_and_line(
    spec: Spec, layout: Layout, tmp_path: Path, body: str, line: int, words: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(InputError) as err:
        load_scenario(str(path), spec, layout)
    assert f"{path}:{line}: " in str(err.value)
    assert words in str(err.value)


@pytest.fixture()
def decoys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding folders named like the shipped scenarios (and a file)."""
    for name in shipped():
        (tmp_path / name).mkdir()
        (tmp_path / name / "rules.yaml").write_text("version: 1\nrules: [oops\n")
    (tmp_path / "mine").write_text("version: 1\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_shipped_name_wins_over_a_folder_of_that_name(
    spec: Spec, layout: Layout, decoys: Path
) -> None:
    assert (decoys / "audit").is_dir() and (decoys / "clean").is_dir()
    for name in ("audit", "clean"):
        scen = load_scenario(name, spec, layout)
        assert scen.file == str(REPO / "deploy" / "lab" / "scenarios" / f"{name}.yaml")
        assert scen.name == name
    assert load_scenario("audit", spec, layout).blocks
    assert scenario_path("./audit") == Path("./audit")  # a path is a path: an error follows
    with pytest.raises(InputError, match=r"^audit: cannot read: Is a directory"):
        load_scenario("./audit", spec, layout)


def test_a_name_that_is_neither_shipped_nor_a_path_is_refused(
    spec: Spec, layout: Layout, decoys: Path
) -> None:
    with pytest.raises(UnknownScenario) as err:
        load_scenario("mine", spec, layout)  # a file of that name exists, but has no / or .yaml
    assert "no shipped scenario 'mine' (shipped: audit, clean, diagnosis)" in str(err.value)
    assert "./mine.yaml" in str(err.value)
    (decoys / "mine.yaml").write_text("version: 1\ndescription: mine\n")
    assert load_scenario("mine.yaml", spec, layout).description == "mine"
    assert looks_like_path("sub/x") and looks_like_path("x.yml") and not looks_like_path("x")
