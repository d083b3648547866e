"""The lab's command line as a user runs it: up, status, down after the caller is gone,
scenario errors, and the loopback demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.lab import netns, procs

REPO = Path(__file__).resolve().parents[1]
PREFIX = "nclc-"  # not "nclab-": never touches a demo running next to the tests

pytestmark = [pytest.mark.root, pytest.mark.slow]
needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None,
    reason="needs root, ip and nft",
)


def _lab(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NETCHECK_LAB_PREFIX=PREFIX, NETCHECK_LAB_STATE=str(state))
    return subprocess.run(
        [sys.executable, "-m", "deploy.lab", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@needs_netns
def test_up_then_down_from_another_process_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    try:
        up = _lab(state, "up", "--scenario", "clean")
        assert up.returncode == 0, up.stderr
        assert "network namespaces" in up.stdout
        # the `up` process is gone: only the state dir and the names remain
        assert len(netns.leftover_namespaces(PREFIX)) == 19
        pids = procs.recorded_pids(state)
        assert len(pids) == 18  # controller, forwarder, 10 agents, 6 stand-ins
        assert all(procs.is_ours(p, state) for p in pids.values())
        status = _lab(state, "status")
        assert status.returncode == 0 and "processes alive: 18 of 18" in status.stdout
    finally:
        down = _lab(state, "down")
    assert down.returncode == 0, down.stderr
    assert "19 namespaces removed" in down.stdout
    assert netns.leftover_namespaces(PREFIX) == ()
    assert not any(Path(f"/proc/{p}").exists() and procs.is_ours(p, state) for p in pids.values())
    again = _lab(state, "down")
    assert "0 processes ended, 0 namespaces removed" in again.stdout


def test_a_bad_scenario_is_refused_with_file_and_line_before_anything_starts(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - interaction: 9\n    action: explode\n")
    out = _lab(tmp_path / "state", "up", "--scenario", str(bad))
    assert out.returncode == 2
    assert f"{bad}:4: " in out.stderr and "action" in out.stderr
    assert netns.leftover_namespaces(PREFIX) == ()
    assert not (tmp_path / "state").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="as root every port binds, so all must pass")
def test_loopback_demo_runs_everything_without_namespaces(tmp_path: Path) -> None:
    out = _lab(tmp_path / "state", "demo", "--loopback", "--scenario", "clean",
               "--out", str(tmp_path / "out"), timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "NO FIREWALL" in out.stdout
    for mode in ("deployment", "cold_vcd", "cold_vcs", "warm_vcd", "warm_vcs"):
        assert f"{mode}: GO" in out.stdout
    assert (tmp_path / "out" / "netcheck-report.html").read_text().lstrip().startswith("<")
    assert procs.recorded_pids(tmp_path / "state") == {}
