"""Hostile or merely huge input files are refused fast, in bounded memory, with file:line.

The bombs run through the real command line (``python -m netcheck.controller check``) as a
subprocess with an address-space limit (``RLIMIT_AS``) and a timeout, so a loader that
expands aliases or checks without a bound fails here with a MemoryError or a timeout
(before these bounds: the alias bomb took 6.9 s to die of a MemoryError under 256 MB, the
1-65535 range with 1,016 hosts died the same way) instead of exiting 2 with one line.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.ingest import inventory_with_agents
from deploy.lab.layout import build_layout, inventory_yaml, roles_of_topology
from netcheck.controller.expand import by_source, check_size, expand, plan_for
from netcheck.controller.inventory import MAX_HOSTS, load_inventory
from netcheck.controller.sourced import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    InputError,
    check_bounds,
    load_yaml,
)
from netcheck.controller.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 384 << 20  # the CLI checks the shipped site in well under 128 MB
# CPU seconds of the refusing process (interpreter start-up included): CPU time, not wall
# time, so a busy machine does not fail it; RLIMIT_CPU ends a runaway loader.
TIME_LIMIT_S = 3.0
CPU_KILL_S = 20


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_KILL_S, CPU_KILL_S))


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _check(*args: str | Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``netcheck-controller check ARGS`` under the memory and CPU limits: (process, CPU
    seconds it used)."""
    start = _children_cpu()
    done = subprocess.run(
        [sys.executable, "-m", "netcheck.controller", "check", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=_limit_memory,
    )
    return done, _children_cpu() - start


def _assert_refused(done: subprocess.CompletedProcess[str], elapsed: float, text: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert text in done.stderr, done.stderr
    assert elapsed < TIME_LIMIT_S, f"{elapsed:.2f} CPU s"


def _billion_laughs(levels: int = 9) -> str:
    """The classic: each level is 9 aliases of the one before (9^9 = 387 M strings)."""
    lines = ["version: 1", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _site(tmp: Path, topology: str | None = None, agents: int = 1_002) -> tuple[Path, Path]:
    """topology.yaml (the shipped one, or ``topology``) with the matrix, and the bench's
    inventory: the example site with its PIO replaced by ``agents`` PIO hosts (1,002: 1,017
    hosts in all)."""
    shutil.copy(ROOT / "guest_os_matrix.yaml", tmp / "guest_os_matrix.yaml")
    topo = tmp / "topology.yaml"
    topo.write_text(topology if topology is not None else (ROOT / "topology.yaml").read_text())
    inv = tmp / "inventory.yaml"
    inv.write_text(yaml.safe_dump(inventory_with_agents(agents), sort_keys=False))
    return topo, inv


def _with_ports(old: str, new: str, interaction: int) -> tuple[str, int]:
    """The shipped topology with the first flow on ``old`` of ``interaction`` given ``new``:
    (text, its line)."""
    lines = (ROOT / "topology.yaml").read_text().splitlines(keepends=True)
    start = lines.index(f"  - id: {interaction}\n")
    n = next(i for i in range(start, len(lines)) if lines[i].strip() == f'- ports: "{old}"')
    lines[n] = lines[n].replace(f'"{old}"', f'"{new}"')
    return "".join(lines), n + 1


def test_the_alias_bomb_is_refused_at_once_in_bounded_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "topology.yaml"
    bomb.write_text(_billion_laughs())
    done, elapsed = _check(bomb)
    # a to e expand to 74,732 nodes; line 7 (f) adds 66,430 per alias of e: the second crosses
    _assert_refused(
        done,
        elapsed,
        f"{bomb}:7: the document expands to more than {MAX_NODES:,} nodes (at alias *e)",
    )
    assert done.stderr.count("\n") == 1


def test_the_alias_bomb_is_refused_as_an_inventory_too(tmp_path: Path) -> None:
    topo, inv = _site(tmp_path)
    inv.write_text(_billion_laughs())
    done, elapsed = _check(topo, "--inventory", inv)
    _assert_refused(done, elapsed, f"{inv}:7: the document expands to more than")


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("block", "version: 1\nx:\n" + "".join("  " * i + "- \n" for i in range(1, 1_000)), 34),
        ("flow", "version: 1\nx: " + "[" * 500_000 + "]" * 500_000 + "\n", 2),
        ("mapping", "version: 1\n" + "".join(" " * i + "k:\n" for i in range(1_000)), 34),
    ],
)
def test_a_deep_nesting_bomb_is_refused(tmp_path: Path, name: str, text: str, line: int) -> None:
    bomb = tmp_path / f"{name}.yaml"
    bomb.write_text(text)
    done, elapsed = _check(bomb)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert elapsed < TIME_LIMIT_S, f"{elapsed:.2f} CPU s"
    # libyaml stops flow nesting at its own depth (1,000); block nesting is ours (32)
    expected = f"nested deeper than {MAX_DEPTH} levels" if name != "flow" else "nesting depth"
    assert f"{bomb}:{line}: " in done.stderr and expected in done.stderr, done.stderr


def test_an_oversized_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "topology.yaml"
    with big.open("w") as f:
        f.write("version: 1\n")
        line = "# " + "x" * 1021 + "\n"
        for _ in range(5 * 1024):  # 5 MiB of comments
            f.write(line)
    done, elapsed = _check(big)
    _assert_refused(done, elapsed, f"{big}: larger than {MAX_FILE_BYTES >> 20} MiB, the limit")


def _besides_pio_443(inv: Path) -> tuple[int, int]:
    """The checks of the shipped topology on the site ``inv`` besides interaction 2's port 443
    (PIO -> the one on-premise vCenter, that pair's only flow): (in one PIO's plan, in all)."""
    spec = load_spec(ROOT / "topology.yaml")
    checks = expand(spec, load_inventory(inv, spec))
    pios = [c for c in checks if c.src_role == "pio" and c.src_host == "bench-pio-0"]
    vcenter = [c for c in checks if c.spec.interaction == 2]
    assert len(vcenter) == len(yaml.safe_load(inv.read_text())["hosts"]["pio"])
    return len(pios) - 1, len(checks) - len(vcenter)


def test_the_huge_range_with_1017_hosts_is_refused_before_expanding(tmp_path: Path) -> None:
    text, line = _with_ports("443", "1-65535", interaction=2)  # pio -> prem_vcenter
    topo, inv = _site(tmp_path, text)
    in_plan, in_site = _besides_pio_443(inv)  # 59 and 62,236 today
    done, elapsed = _check(topo, "--inventory", inv)
    _assert_refused(done, elapsed, f"{topo}:{line}: interaction 2, ports 1-65535 from pio")
    assert (
        "1 destination host x 65,535 ports = 65,535 checks in the plan of each pio agent "
        f"(1,002 pio hosts in {inv}); {65_535 + in_plan:,} in all, more than "
        "policy.max_checks_per_plan (20,000)"
    ) in done.stderr
    assert (
        "1,002 source hosts x 1 destination host x 65,535 ports = 65,666,070 checks; the site "
        f"of {inv} would expand to {65_666_070 + in_site:,} checks, more than "
        "policy.max_checks_per_site (200,000)"
    ) in done.stderr


def test_the_plan_cap_is_exact(tmp_path: Path) -> None:
    """The user's plan (one pio): 40001-59999 and port 22 are 20,000 checks and load; one
    port more is refused."""
    text, line = _with_ports("443", "40000-59999", interaction=1)  # user -> pio
    topo, inv = _site(tmp_path, text, agents=1)
    spec = load_spec(topo)
    site = load_inventory(inv, spec)
    with pytest.raises(InputError) as info:
        plan_for(spec, site, "user", "admin-ws", "198.18.10.10")
    assert str(info.value) == (
        f"{topo}:{line}: interaction 1, ports 40000-59999 from user to pio: 1 destination "
        "host x 20,000 ports = 20,000 checks in the plan of each user agent (1 user host in "
        f"{inv}); 20,001 in all, more than policy.max_checks_per_plan (20,000)"
    )
    topo.write_text(text.replace("40000-59999", "40001-59999"))
    spec = load_spec(topo)
    plan = plan_for(spec, site, "user", "admin-ws", "198.18.10.10")
    assert len(plan.checks) == spec.policy.max_checks_per_plan == 20_000


def test_the_site_cap_holds_though_every_plan_is_small(tmp_path: Path) -> None:
    """1,002 PIOs x 200 ports to the one on-premise vCenter: 259 checks a plan, 200,400 from
    that flow alone, 262,636 for the site."""
    text, line = _with_ports("443", "443-642", interaction=2)  # pio -> prem_vcenter
    topo, inv = _site(tmp_path, text)
    in_plan, in_site = _besides_pio_443(inv)
    spec = load_spec(topo)
    assert 200 + in_plan < spec.policy.max_checks_per_plan
    site = load_inventory(inv, spec)
    with pytest.raises(InputError) as info:
        expand(spec, site)
    assert len(info.value.problems) == 1
    assert str(info.value) == (
        f"{topo}:{line}: interaction 2, ports 443-642 from pio to prem_vcenter: 1,002 source "
        "hosts x 1 destination host x 200 ports = 200,400 checks; the site of "
        f"{inv} would expand to {200_400 + in_site:,} checks, more than "
        "policy.max_checks_per_site (200,000)"
    ), str(info.value)


def test_too_many_hosts_are_refused(tmp_path: Path) -> None:
    topo, inv = _site(tmp_path, agents=MAX_HOSTS)  # plus the example's others (15 today)
    hosts = sum(map(len, yaml.safe_load(inv.read_text())["hosts"].values()))
    assert hosts > MAX_HOSTS
    done, elapsed = _check(topo, "--inventory", inv)
    _assert_refused(done, elapsed, f"an inventory holds at most {MAX_HOSTS:,}")
    assert f"{inv}:3: {hosts:,} hosts; an inventory holds at most" in done.stderr


def test_the_node_bound_is_exact(tmp_path: Path) -> None:
    """A sequence of n scalars is n + 1 nodes; an alias adds what it names."""
    assert check_bounds("- &a [x, x]\n- *a\n- *a\n", "f") == 1 + 3 + 3 + 3
    fits = "[" + "x," * (MAX_NODES - 2) + "x]"
    assert check_bounds(fits, "f") == MAX_NODES
    with pytest.raises(InputError, match=f"f:1: the document expands to more than {MAX_NODES:,}"):
        check_bounds(fits.replace("[", "[x,", 1), "f")


def test_what_the_project_ships_and_makes_stays_within_the_bounds(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "topology.yaml")
    example = load_inventory(ROOT / "inventory.example.yaml", spec)
    check_size(spec, example)
    # the lab's generated inventory (deploy/lab), on the shipped topology
    lab = tmp_path / "lab.yaml"
    lab.write_text(inventory_yaml(build_layout(roles_of_topology(str(ROOT / "topology.yaml")))))
    check_size(spec, load_inventory(lab, spec))
    # the bench's biggest ingest site (1,000 PIO agents): 63,112 checks today (3.2 times under
    # the site cap), its biggest plan the user's, 2,000 (443 and 22 to each PIO; the PIOs' are
    # 60), a tenth of the plan cap
    _, inv = _site(tmp_path, agents=1_000)
    checks = expand(spec, load_inventory(inv, spec))
    assert len(checks) * 3 < spec.policy.max_checks_per_site
    assert max(map(len, by_source(checks).values())) * 10 <= spec.policy.max_checks_per_plan
    # the bench's wide sweep (7,011 ports, one plan) twice over
    assert spec.policy.max_checks_per_plan > 7_011 * 2
    for path in (ROOT / "deploy" / "lab" / "scenarios").glob("*.yaml"):
        load_yaml(path)
    load_yaml(ROOT / "bench" / "scenarios" / "quarter.yaml")
