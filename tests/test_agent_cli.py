"""The offline ``run`` command through the real CLI, in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from port_helpers import free_ports

from netcheck.agent.wire import (
    CheckSpec,
    ListenSpec,
    Plan,
    ResultBatch,
    Service,
    decode,
    encode,
)

REPO = Path(__file__).resolve().parent.parent
ADDR = "127.0.0.9"


def test_offline_run_probes_its_own_listeners(tmp_path: Path) -> None:
    ssh_port, tls_port, closed_port = free_ports(3, ADDR)
    services: tuple[tuple[int, Service], ...] = (
        (ssh_port, "ssh"),
        (tls_port, "tls"),
        (closed_port, "tcp"),
    )
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
            for port, svc in services
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


# Who runs as nobody needs an interpreter and a package that nobody can read: the checkout
# (a clone in a 0700 home) and a pyenv under /root may be neither, so the agent package is
# copied into the test's world-readable directory and run by the system's Python 3.
UNPRIVILEGED_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def _readable_agent(into: Path) -> Path:
    """``into/netcheck/agent``: a copy of the agent package (stdlib only) others can read."""
    pkg = into / "netcheck"
    shutil.copytree(
        REPO / "netcheck" / "agent", pkg / "agent", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "netcheck" / "__init__.py", pkg / "__init__.py")
    for path in (into, *into.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return into


def _run_unprivileged(tmp_path: Path) -> None:
    (high,) = free_ports(1, ADDR)
    plan = Plan(
        role="esxi",
        host="esxi-1",
        address=ADDR,
        listen=(ListenSpec(port=902, service="authd"), ListenSpec(port=high, service="tcp")),
        checks=(),
    )
    code = _readable_agent(tmp_path / "code")
    plan_file, out = tmp_path / "plan.json", tmp_path / "results.json"
    plan_file.write_text(json.dumps(encode(plan)))
    plan_file.chmod(0o644)
    tmp_path.chmod(0o777)
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            # -E -S: no PYTHONPATH, no site-packages; -m puts the cwd (the copy) on sys.path
            UNPRIVILEGED_PYTHON,
            "-E",
            "-S",
            "-m",
            "netcheck.agent",
            "run",
            "--plan",
            str(plan_file),
            "--out",
            str(out),
        ],
        cwd=code,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
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


# -- exit codes: one map (agent/errors.py EXIT_CODES), for every subcommand ---------------


def agent(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netcheck.agent", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "NETCHECK_TOKEN"} | (env or {}),
    )


SERVE = ("serve", "--controller", "http://127.0.0.1:9", "--role", "pio", "--host", "pio-1")
HTTPS = ("serve", "--controller", "https://127.0.0.1:9", "--role", "pio", "--host", "pio-1")
ENROL = ("enrol", "--controller", "https://127.0.0.1:9", "--role", "pio", "--host", "pio-1")
ENROL_FILES = ("--state-dir", "/nonexistent/state", "--join-token-file", "/dev/null")


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        (("run", "--plan", "/nonexistent/plan.json", "--out", "/dev/null"), {}, "cannot read"),
        (("run", "--plan", "/dev/null"), {}, "required: --out"),
        (("run", "--mode", "ping"), {}, "invalid choice"),
        ((*SERVE, "--address", ADDR), {}, "no token: give --token-file or set NETCHECK_TOKEN"),
        ((*SERVE, "--address", ADDR, "--token-file", "/nonexistent"), {}, "cannot read the"),
        ((*SERVE, "--address", ADDR, "--settle", "1"), {"NETCHECK_TOKEN": "t"}, "need --once"),
        ((*SERVE, "--address", ADDR, "--health-listen", "x"), {}, "'x' is not HOST:PORT"),
        (
            ("serve", "--controller", "ftp://x", "--role", "r", "--host", "h", "--address", ADDR),
            {"NETCHECK_TOKEN": "t"},
            "not an http(s) URL",
        ),
        (("bogus",), {}, "invalid choice"),
        ((*HTTPS, "--address", ADDR), {}, "give --state-dir"),
        ((*HTTPS, "--address", ADDR, "--state-dir", "/nonexistent"), {}, "no certificate in"),
        ((*SERVE, "--address", ADDR, "--ca", "/x"), {"NETCHECK_TOKEN": "t"}, "need an https"),
        ((*ENROL, *ENROL_FILES), {}, "required: --ca"),
        ((*ENROL, *ENROL_FILES, "--ca", "/nonexistent/ca.pem"), {}, "no CA file"),
        ((*ENROL, *ENROL_FILES, "--ca", __file__), {}, "no join token in /dev/null"),
        (
            ("enrol", "--controller", "http://127.0.0.1:9", *ENROL[3:], *ENROL_FILES, "--ca", "x"),
            {},
            "enrolment needs an https:// controller",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    argv: tuple[str, ...], env: dict[str, str], words: str
) -> None:
    proc = agent(*argv, env=env)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr


def test_the_map_and_the_help_agree() -> None:
    from netcheck.agent.cli import EPILOG
    from netcheck.agent.errors import (
        AuthError,
        CertError,
        EnrolError,
        InputError,
        LinkError,
        NetcheckAgentError,
        TransportError,
        WireError,
        exit_code,
    )

    kinds = (InputError, WireError, LinkError, TransportError, AuthError, EnrolError, CertError)
    codes = {kind.__name__: exit_code(kind("x")) for kind in kinds}
    assert codes == {
        "InputError": 2,
        "WireError": 2,
        "LinkError": 1,
        "TransportError": 1,
        "AuthError": 1,
        "EnrolError": 1,
        "CertError": 1,
    }
    assert all(issubclass(k, NetcheckAgentError) for k in kinds)
    help_text = agent("--help").stdout
    assert EPILOG in help_text
    for code in ("0  done", "1  failed", "2  bad input"):
        assert code in help_text


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (("--help",), 0),
        (("--version",), 0),
        (("run", "--help"), 0),
        (("serve", "--help"), 0),
        (("enrol", "--help"), 0),
        (("run", "--plan", "/nonexistent", "--out", "/dev/null"), 2),
        (SERVE, 2),  # a usage error: --address is missing
        ((*SERVE, "--address", ADDR), 2),  # no token
    ],
)
def test_a_closed_pipe_is_quiet(argv: tuple[str, ...], code: int) -> None:
    """``netcheck-agent ... 2>&1 | head`` when head has gone: the command's own exit code,
    no traceback (Python exits 120 when it cannot flush its output at the end)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the agent writes
    try:
        closed = subprocess.run(
            [sys.executable, "-m", "netcheck.agent", *argv],
            cwd=REPO,
            stdout=write_end,
            stderr=write_end,
            timeout=30,
            env={k: v for k, v in os.environ.items() if k != "NETCHECK_TOKEN"},
        )
        only_stdout = subprocess.run(
            [sys.executable, "-m", "netcheck.agent", *argv],
            cwd=REPO,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            env={k: v for k, v in os.environ.items() if k != "NETCHECK_TOKEN"},
        )
    finally:
        os.close(write_end)
    assert closed.returncode == code
    assert only_stdout.returncode == code
    assert "Traceback" not in only_stdout.stderr and "Exception ignored" not in only_stdout.stderr
