"""The offline ``run`` command through the real CLI, in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from netcheck.agent.wire import CheckSpec, ListenSpec, Plan, ResultBatch, decode, encode

REPO = Path(__file__).resolve().parent.parent
ADDR = "127.0.0.9"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((ADDR, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def test_offline_run_probes_its_own_listeners(tmp_path: Path) -> None:
    ssh_port, tls_port, closed_port = free_ports(3)
    plan = Plan(
        role="pio",
        host="pio-1",
        address=ADDR,
        listen=(ListenSpec(port=ssh_port, service="ssh"), ListenSpec(port=tls_port, service="tls")),
        checks=tuple(
            CheckSpec(
                check_id=f"4:pio-1>pio-1:{port}",
                interaction=4,
                dst_role="pio",
                dst_host="pio-1",
                dst_address=ADDR,
                port=port,
                service=svc,
            )
            for port, svc in ((ssh_port, "ssh"), (tls_port, "tls"), (closed_port, "tcp"))
        ),
        timeout_s=1.0,
    )
    plan_file, out = tmp_path / "plan.json", tmp_path / "results.json"
    plan_file.write_text(json.dumps(encode(plan)))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "netcheck.agent",
            "run",
            "--plan",
            str(plan_file),
            "--out",
            str(out),
            "--mode",
            "connect",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    batch = decode(ResultBatch, json.loads(out.read_text()))
    states = {r.port: r.state for r in batch.results}
    assert states == {ssh_port: "open", tls_port: "open", closed_port: "refused"}
    assert all(r.mode == "connect" for r in batch.results)
    assert {s.port: s.state for s in batch.listeners} == {
        ssh_port: "listening",
        tls_port: "listening",
    }
    assert {p.port for p in batch.peers} == {ssh_port, tls_port}


def test_bad_plan_is_refused_with_the_field_named(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"role": "x", "host": "h", "address": ADDR, "listen": []}))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "netcheck.agent",
            "run",
            "--plan",
            str(plan_file),
            "--out",
            "/dev/null",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "checks" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root+setpriv")
def test_privileged_port_without_capability_is_denied() -> None:
    with tempfile.TemporaryDirectory(prefix="nct-agent-") as tmp:
        _run_unprivileged(Path(tmp))


def _run_unprivileged(tmp_path: Path) -> None:
    (high,) = free_ports(1)
    plan = Plan(
        role="esxi",
        host="esxi-1",
        address=ADDR,
        listen=(ListenSpec(port=902, service="authd"), ListenSpec(port=high, service="tcp")),
        checks=(),
    )
    plan_file, out = tmp_path / "plan.json", tmp_path / "results.json"
    plan_file.write_text(json.dumps(encode(plan)))
    tmp_path.chmod(0o777)
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            sys.executable,
            "-m",
            "netcheck.agent",
            "run",
            "--plan",
            str(plan_file),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    batch = decode(ResultBatch, json.loads(out.read_text()))
    by_port = {s.port: s for s in batch.listeners}
    assert by_port[902].state == "denied"
    assert "CAP_NET_BIND_SERVICE" in by_port[902].error
    assert by_port[high].state == "listening"
