"""The guest agent against a real controller over loopback with mutual TLS.

`netcheck-controller ca init` makes the site's CA, `serve --pki` runs the controller, `enrol`
issues a join token; the guest agent, as the single file netcheck-guest.pyz on the system's
python3 with no site-packages (-I -S), enrols (its key made by openssl), then serves one round
as cloud-vm-1: its stand-ins hold the guest's inbound ports, its probes go to the Cloud
Cache's, and its report carries its facts. The controller stores them unchanged in shape: the
SQLite file has its results (sent by its certificate) and its facts, the JSON report lists the
VM as reporting, and `gate --vm` judges the guest's own OS.
"""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from port_helpers import free_port

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
SYSTEM_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
SITE = """version: 1
site: guest-e2e
hosts:
  pio: [{name: pio-1, address: 127.0.0.10}]
  cloud_cache: [{name: cloud-cache, address: 127.0.0.40}]
  cloud_vm: [{name: cloud-vm-1, address: 127.0.0.1, os: "RHEL 8.3", boot: UEFI}]
"""
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")


def _run(argv: "list[str]", **kw: Any) -> "subprocess.CompletedProcess[str]":
    """``argv`` run with its output captured as text. Written for the oldest Python a guest
    ships (3.6: no ``capture_output``, no ``text``), like the guest's own code."""
    return subprocess.run(  # noqa: UP022
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,  # noqa: UP021
        **kw,
    )


def _guest_command(pyz: Path) -> "tuple[list[str], tuple[str, ...], dict[str, str]]":
    """How a guest runs the archive (its system python3, isolated, no site-packages), as
    cloud-vm-1, in a bare environment."""
    guest = [SYSTEM_PYTHON, "-I", "-S", str(pyz)]
    ident = ("--role", "cloud_vm", "--host", "cloud-vm-1")
    genv = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    return guest, ident, genv


def cli(*argv: str) -> "subprocess.CompletedProcess[str]":
    return _run(
        [sys.executable, "-m", "netcheck.controller", *argv],
        cwd=REPO, env=ENV, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
def controller(tmp_path: Path) -> "Iterator[tuple[str, Path, Path, Path]]":
    """(URL, CA file, database, inventory) of a running `serve --pki`."""
    inv = tmp_path / "inventory.yaml"
    inv.write_text(SITE)
    assert cli("ca", "init", "--pki", str(tmp_path / "pki")).returncode == 0
    port, db = free_port(), tmp_path / "nc.db"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "netcheck.controller", "serve"),
            *("--topology", str(REPO / "topology.yaml"), "--inventory", str(inv)),
            *("--db", str(db), "--listen", f"127.0.0.1:{port}", "--pki", str(tmp_path / "pki")),
            "--open-reads",
        ],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(200):
            if proc.poll() is not None:
                pytest.fail(f"controller exited: {proc.stderr.read() if proc.stderr else b''!r}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"https://127.0.0.1:{port}", tmp_path / "pki" / "ca.pem", db, inv
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def _guest_and_token(tmp_path: Path, db: Path, inv: Path) -> "tuple[Path, Path]":
    """The guest archive, built, and a join token for cloud-vm-1 in a file (0600)."""
    pyz = tmp_path / "netcheck-guest.pyz"
    _run(
        [sys.executable, str(REPO / "deploy/zipapp/build.py"), "--guest", "--out", str(pyz)],
        check=True, timeout=60,
    )  # fmt: skip
    spec_args = ("--topology", str(REPO / "topology.yaml"), "--inventory", str(inv))
    out = cli("enrol", "--db", str(db), *spec_args, "--role", "cloud_vm", "--host", "cloud-vm-1")
    assert out.returncode == 0, out.stderr
    token_file = tmp_path / "token"
    token_file.write_text(out.stdout.split()[1] + "\n")
    token_file.chmod(0o600)
    return pyz, token_file


@needs_openssl
def test_the_guest_enrols_reports_over_mtls_and_the_gate_reads_its_facts(
    tmp_path: Path, controller: "tuple[str, Path, Path, Path]"
) -> None:
    url, ca, db, inv = controller
    pyz, token_file = _guest_and_token(tmp_path, db, inv)
    spec_args = ("--topology", str(REPO / "topology.yaml"), "--inventory", str(inv))
    state = tmp_path / "state"
    guest, ident, genv = _guest_command(pyz)
    done = _run(
        [*guest, "enrol", "--controller", url, "--ca", str(ca), "--join-token-file",
         str(token_file), "--state-dir", str(state), *ident],
        timeout=60, env=genv, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (state / "agent.pem").stat().st_mode & 0o077 == 0
    done = _run(
        [*guest, "serve", "--controller", url, "--state-dir", str(state), *ident,
         "--address", "127.0.0.1", "--once"],
        timeout=120, env=genv, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with closing(sqlite3.connect(db)) as c:
        results = c.execute(
            "SELECT check_id, state, sent_by FROM results WHERE src_host = 'cloud-vm-1'"
        ).fetchall()
        facts = dict(c.execute("SELECT name, value FROM guest_facts WHERE host = 'cloud-vm-1'"))
        listeners = c.execute(
            "SELECT port, state FROM listeners WHERE host = 'cloud-vm-1'"
        ).fetchall()
    # cloud-vm-1 -> cloud-cache on 3260 and 9001-9002: nothing listens there, refused
    assert sorted(r[0] for r in results) == [
        "12:cloud-vm-1>cloud-cache:3260", "12:cloud-vm-1>cloud-cache:9001",
        "12:cloud-vm-1>cloud-cache:9002",
    ]  # fmt: skip
    assert {r[1] for r in results} == {"refused"}
    assert all(r[2].startswith("cert:") for r in results)  # mutual TLS, its own certificate
    assert sorted(p for p, _ in listeners) == [9001, 9002]
    assert "os.name" in facts and "boot.matrix" in facts and "net.static_ip" in facts
    here = json.loads(
        _run([*guest, "facts", "--json"],
                       timeout=60, env=genv, check=True).stdout
    )["facts"]  # fmt: skip
    assert json.loads(facts["os.name"]) == next(f["value"] for f in here if f["name"] == "os.name")
    # the report lists the VM with its guest agent; the gate judges the guest's own OS
    report = cli("report", "--db", str(db), *spec_args, "--format", "json")
    assert report.returncode == 0, report.stderr
    (vm,) = json.loads(report.stdout)["vms"]
    assert vm["host"] == "cloud-vm-1" and vm["guest_agent"] is True
    assert vm["checks_from_guest"] >= 3
    g = cli("gate", "--db", str(db), *spec_args, "--mode", "warm_vcd", "--vm", "cloud-vm-1")
    mine = next(f["value"] for f in here if f["name"] == "os.name")
    boot = next(f["value"] for f in here if f["name"] == "boot.matrix")
    assert f"the inventory says RHEL 8.3 UEFI, the guest reports {mine} {boot}" in g.stdout
    assert "no guest agent report" not in g.stdout


@needs_openssl
def test_the_guest_serves_until_sigterm_then_reports_its_listeners_closed(
    tmp_path: Path, controller: "tuple[str, Path, Path, Path]"
) -> None:
    url, ca, db, inv = controller
    pyz, token_file = _guest_and_token(tmp_path, db, inv)
    guest, ident, genv = _guest_command(pyz)
    state = tmp_path / "state"
    _run(
        [*guest, "enrol", "--controller", url, "--ca", str(ca), "--join-token-file",
         str(token_file), "--state-dir", str(state), *ident],
        timeout=60, env=genv, check=True,
    )  # fmt: skip
    proc = subprocess.Popen(
        [*guest, "serve", "--controller", url, "--state-dir", str(state), *ident,
         "--address", "127.0.0.1"],
        env=genv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip

    def states() -> "set[str]":
        with closing(sqlite3.connect(db)) as c:
            rows = c.execute("SELECT state FROM listeners WHERE host = 'cloud-vm-1'")
            return {r[0] for r in rows}

    try:
        for _ in range(300):
            if states() == {"listening"}:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        assert states() == {"listening"}
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    assert states() == {"closed"}
