"""The lab's command line as a user runs it: up, status, down after the caller is gone,
scenario errors, and the loopback demo with the commands it prints. Every run starts in a
working directory holding folders named ``audit`` and ``clean`` (the shipped names win)."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
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


def _env(state: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    return dict(
        os.environ, NETCHECK_LAB_PREFIX=PREFIX, NETCHECK_LAB_STATE=str(state), PYTHONPATH=path
    )


def _cwd(tmp_path: Path) -> Path:
    """A working directory with folders named like the shipped scenarios."""
    cwd = tmp_path / "cwd"
    for name in ("audit", "clean"):
        (cwd / name).mkdir(parents=True, exist_ok=True)
    return cwd


def _lab(
    state: Path, *args: str, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.lab", *args],
        cwd=cwd or _cwd(state.parent), env=_env(state), capture_output=True, text=True,
        timeout=timeout, check=False,
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
        assert "scenario 'clean': nftables table present on routers: prem, cloud" in status.stdout
        assert "page: forwarded to https://127.0.0.1:" in status.stdout
        # the lab's secrets: 0600 files, none of them in what `up` printed
        secrets = [
            state / "read-token",
            state / "pki" / "ca-key.pem",
            state / "pki" / "server-key.pem",
        ]
        secrets += sorted((state / "agents").glob("*/join-token"))
        assert len(secrets) == 3 + 10
        for f in secrets:
            assert f.stat().st_mode & 0o777 == 0o600, f
        assert (state / "read-token").read_text().strip() not in up.stdout + up.stderr
        os.kill(pids["forward"], signal.SIGTERM)  # the lab's own forwarder, by its pid
        for _ in range(50):
            if not procs.alive_recorded(state).get("forward"):
                break
            time.sleep(0.1)
        status = _lab(state, "status")
        assert "page: NOT forwarded" in status.stdout
        assert "processes alive: 17 of 18" in status.stdout
    finally:
        down = _lab(state, "down")
    assert down.returncode == 0, down.stderr
    assert "19 namespaces removed" in down.stdout
    assert netns.leftover_namespaces(PREFIX) == ()
    assert not any(Path(f"/proc/{p}").exists() and procs.is_ours(p, state) for p in pids.values())
    after = _lab(state, "status")
    assert after.returncode == 1
    assert after.stdout.splitlines()[0] == "lab down: no namespaces, no processes"
    assert "applied" not in after.stdout and "forwarded" not in after.stdout
    assert f"namespaces ({PREFIX}*): 0" in after.stdout
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


def test_an_unknown_scenario_name_is_refused_with_the_shipped_names(tmp_path: Path) -> None:
    cwd = _cwd(tmp_path)
    (cwd / "mine").write_text("version: 1\n")
    out = _lab(tmp_path / "state", "up", "--scenario", "mine", cwd=cwd)
    assert out.returncode == 2
    assert "no shipped scenario 'mine' (shipped: audit, clean, diagnosis)" in out.stderr
    assert not (tmp_path / "state").exists()


def _commands(lines: list[str], after: str) -> list[list[str]]:
    """The indented commands printed right after the line starting with ``after`` (a line
    ending with a backslash goes on on the next one, as in a shell)."""
    start = next(i for i, line in enumerate(lines) if line.startswith(after)) + 1
    out: list[list[str]] = []
    text = ""
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        text += line
        if text.endswith("\\"):
            text = text[:-1]
            continue
        out.append(shlex.split(text))
        text = ""
    return out


def _sub(cmd: list[str]) -> str:
    return next(a for a in cmd if a in ("report", "gate"))


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="as root every port binds, so all must pass")
def test_loopback_demo_runs_everything_and_its_printed_commands_work(tmp_path: Path) -> None:
    """The demo (clean, loopback, --keep) from a working directory with audit/ and clean/
    folders; while it serves, the live commands it printed answer; after Ctrl-C (SIGTERM),
    the database commands it printed still do."""
    cwd, state = _cwd(tmp_path), tmp_path / "state"
    demo = subprocess.Popen(
        [sys.executable, "-m", "deploy.lab", "demo", "--loopback", "--scenario", "clean",
         "--keep", "--out", str(tmp_path / "out")],
        cwd=cwd, env=_env(state), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    watchdog = threading.Timer(240, demo.kill)  # a hung demo fails the test, never hangs it
    watchdog.start()
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Ctrl-C stops"):
                break
        text = "\n".join(lines)
        assert "NO FIREWALL" in text, text[-3000:]
        assert "mutual TLS" in text
        assert "Probe mode per agent:" in text
        assert (state / "read-token").read_text().strip() not in text
        for mode in ("deployment", "cold_vcd", "cold_vcs", "warm_vcd", "warm_vcs"):
            # each gate once (the table's own gates section is not repeated)
            assert sum(f"{mode}: GO" in line for line in lines) == 1, text[-3000:]
        assert "  deployment: GO (exit 0)" in lines
        wide = [line for line in lines if len(line) > 120]
        assert not wide, wide
        assert f"Database: {state / 'netcheck.db'}" in lines
        report = tmp_path / "out" / "netcheck-report.html"
        assert f"HTML report: {report}" in lines
        assert report.read_text().lstrip().startswith("<")
        live = _commands(lines, "serving the topology page at ")
        assert [_sub(c) for c in live] == ["report", "gate"]
        assert all("--controller" in c for c in live)
        assert all(c[c.index("--controller") + 1].startswith("https://") for c in live)
        assert all(c[c.index("--read-token-file") + 1] == str(state / "read-token") for c in live)
        report_live, gate_live = (_run(c, cwd) for c in live)
        assert report_live.returncode == 0, report_live.stderr
        assert "pass" in report_live.stdout
        assert gate_live.returncode == 0, gate_live.stderr
        assert gate_live.stdout.startswith("deployment: GO")
        demo.send_signal(signal.SIGTERM)  # what Ctrl-C does; our child, by its pid
        rest, _ = demo.communicate(timeout=60)
    finally:
        watchdog.cancel()
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
    assert demo.returncode == 0, rest[-3000:]
    assert "lab down (" in rest
    assert procs.recorded_pids(state) == {}
    offline = _commands(lines, "Report and gate from the database")
    assert [_sub(c) for c in offline] == ["report", "gate"]
    assert all("--db" in c and "--inventory" in c for c in offline)
    report_cmd, gate_cmd = offline
    done = _run(report_cmd, cwd)
    assert done.returncode == 0, done.stderr
    assert "pass" in done.stdout
    done = _run(gate_cmd, cwd)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deployment: GO")
