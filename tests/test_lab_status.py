"""`python -m deploy.lab status` from what exists, and the commands the demo prints: pure."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.lab import cli
from deploy.lab import lab as labmod
from deploy.lab.layout import build_layout
from netcheck.controller.spec import Spec, load_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(REPO / "topology.yaml")


@pytest.fixture()
def lab(spec: Spec, tmp_path: Path) -> labmod.Lab:
    layout = build_layout({n: (r.site, r.agent) for n, r in spec.roles.items()}, "nclx-")
    return labmod.Lab(
        "netns", tmp_path, layout, "audit", "http://198.19.0.1:8400", "http://127.0.0.1:8481/",
        "nclx-ctl",
    )  # fmt: skip


def _namespaces(lab: labmod.Lab) -> tuple[str, ...]:
    return ("nclx-ctl", "nclx-rt-prem", "nclx-rt-cloud", *(h.netns for h in lab.layout.hosts))


def test_a_whole_lab_is_up(lab: labmod.Lab) -> None:
    seen = labmod.Observed(_namespaces(lab), ("prem", "cloud"), {"controller": 7, "forward": 8}, 2)
    lines = cli.status_lines(lab, seen, "nclx-")
    assert lines[0] == f"lab up (netns), state dir {lab.state}"
    assert "nftables table present on routers: prem, cloud" in lines[1]
    assert lines[2] == "page: forwarded to http://127.0.0.1:8481/ (pid 8)"
    assert lines[-2:] == ["namespaces (nclx-*): 19", "processes alive: 2 of 2 recorded"]


def test_after_down_nothing_is_applied_or_forwarded(lab: labmod.Lab) -> None:
    """The description may still be there (an old lab.json): what exists decides."""
    seen = labmod.Observed((), (), {}, 0)
    for described in (lab, None):
        lines = cli.status_lines(described, seen, "nclx-")
        assert lines[0] == "lab down: no namespaces, no processes"
        assert not any("applied" in x or "forwarded" in x for x in lines)


def test_parts_missing_are_reported(lab: labmod.Lab) -> None:
    no_forwarder = labmod.Observed(_namespaces(lab), ("cloud",), {"controller": 7}, 18)
    lines = cli.status_lines(lab, no_forwarder, "nclx-")
    assert "page: NOT forwarded (the forwarder is not running)" in lines
    assert "routers: cloud (of prem, cloud)" in lines[1]
    crashed = labmod.Observed(_namespaces(lab)[:5], (), {"forward": 8}, 18)
    assert cli.status_lines(lab, crashed, "nclx-")[0].startswith("lab partly up")


def test_printed_commands_name_every_file_they_need(lab: labmod.Lab, spec: Spec) -> None:
    report, gate = cli.offline_commands(lab, spec)
    for line in (report, gate):
        for path in (lab.db, lab.topology, lab.inventory):
            assert str(path) in line
    assert " report " in report and " gate --mode deployment " in gate
    live = cli.live_commands(lab, spec)
    assert all("--controller http://127.0.0.1:8481" in line for line in live)
    # the read token by file, verified with the lab's CA: no secret on the command line
    assert all(f"--read-token-file {lab.read_token_file}" in line for line in live)
    assert all(f"--ca {lab.ca_file}" in line for line in live)
