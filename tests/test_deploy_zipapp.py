"""The single-file agent (deploy/zipapp/build.py): built, then run isolated against real sockets."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Self

import pytest
from port_helpers import free_port

REPO = Path(__file__).resolve().parent.parent


def _load_build_script() -> ModuleType:
    """deploy/zipapp/build.py as a module (under its own name: PyPI has a `build` too)."""
    spec = importlib.util.spec_from_file_location(
        "netcheck_zipapp_build", REPO / "deploy" / "zipapp" / "build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


zipapp_build = _load_build_script()

NOBODY = 65534
# A guest's plain Python 3, as the archive will meet it (pyenv's lives under /root).
SYSTEM_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
# -I: no environment, no user site; -S: no site module, so no site-packages at all.
ISOLATED = [SYSTEM_PYTHON, "-I", "-S"]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A directory another user can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="netcheck-pyz-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture(scope="module")
def pyz(workdir: Path) -> Path:
    out: Path = zipapp_build.build(workdir / "netcheck-agent.pyz")
    out.chmod(0o644)
    return out


def check(port: int, interaction: int = 4) -> dict[str, object]:
    return {
        "check_id": f"{interaction}:pio-1>prem-mgr-1:{port}",
        "interaction": interaction,
        "dst_role": "prem_manager",
        "dst_host": "prem-mgr-1",
        "dst_address": "127.0.0.1",
        "port": port,
        "service": "tcp",
    }


def as_unprivileged_user() -> dict[str, Any]:
    """subprocess kwargs that drop root, so the test shows the agent needs none."""
    if os.geteuid() != 0 or sys.executable == SYSTEM_PYTHON:
        return {}
    return {"user": NOBODY, "group": NOBODY, "extra_groups": []}


def test_archive_holds_only_the_agent_and_a_main(pyz: Path) -> None:
    import zipfile

    names = zipfile.ZipFile(pyz).namelist()
    assert "__main__.py" in names and "netcheck/agent/cli.py" in names
    assert {n.split("/")[0] for n in names} == {"__main__.py", "netcheck"}
    assert not [n for n in names if n.endswith((".so", ".pyc"))]
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")


def test_only_optional_extras_are_outside_the_stdlib() -> None:
    """`run` and `serve` need only the stdlib, SYN probes included; cryptography (the stand-in
    certificate where there is no openssl command) is optional, imported lazily."""
    assert zipapp_build.forbidden_imports(REPO / "agent") == []
    needs = zipapp_build.third_party_imports(REPO / "agent")
    assert needs == {"netcheck.agent.certs": {"cryptography"}}


BAD_AGENTS = [
    ("eager.py", "import requests\n", "agent/eager.py:1: netcheck.agent.eager imports requests"),
    (
        "sub/__init__.py",
        "def f():\n    from yaml import safe_load\n",
        "netcheck.agent.sub imports yaml: not in the standard library",
    ),
    (
        "certs.py",
        "import os\nfrom cryptography import x509\n",
        "agent/certs.py:2: netcheck.agent.certs imports cryptography: an optional extra, "
        "but imported at module level",
    ),
    (
        "link.py",
        "def f():\n    import cryptography\n",
        "netcheck.agent.link imports cryptography: not in the standard library",  # extras stay put
    ),
    (
        "probes/syn.py",
        "def f():\n    from scapy.layers import inet\n",
        "netcheck.agent.probes.syn imports scapy: not in the standard library",
    ),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_AGENTS, ids=[b[0] for b in BAD_AGENTS])
def test_a_third_party_import_fails_the_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, message: str
) -> None:
    package = tmp_path / "agent"
    (package / "probes").mkdir(parents=True)
    (package / "__init__.py").write_text("import json\n")
    (package / "certs.py").write_text("def f():\n    import cryptography\n")
    assert zipapp_build.forbidden_imports(package) == []  # lazy extras where allowed: fine
    path = package / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    out = tmp_path / "agent.pyz"
    assert zipapp_build.main(["--out", str(out)], package=package) == 1
    err = capsys.readouterr().err
    assert message in err.replace(str(tmp_path) + "/", ""), err
    assert "FAILED" in err and not out.exists()


def test_the_build_script_passes_on_the_real_agent(tmp_path: Path) -> None:
    """The script itself, as a build runs it: exit 0 on the real agent."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "deploy" / "zipapp" / "build.py"),
            "--out",
            str(tmp_path / "a.pyz"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "lazily (optional extra)" in proc.stdout and (tmp_path / "a.pyz").is_file()


def test_isolated_run_reports_open_refused_and_its_listener(pyz: Path, workdir: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    open_port = listener.getsockname()[1]
    refused_port = free_port()
    standin_port = free_port()
    plan = {
        "role": "pio",
        "host": "pio-1",
        "address": "127.0.0.1",
        "listen": [{"port": standin_port, "service": "tcp", "interactions": [4]}],
        "checks": [check(open_port), check(refused_port), check(standin_port, 1)],
        "timeout_s": 1.0,
        "retries": 0,
        "concurrency": 4,
    }
    plan_file = workdir / "plan.json"
    plan_file.write_text(json.dumps(plan))
    plan_file.chmod(0o644)
    out = workdir / "results.json"
    try:
        proc = subprocess.run(
            [*ISOLATED, str(pyz), "run", "--plan", str(plan_file), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=workdir,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
            check=False,
            **as_unprivileged_user(),
        )
    finally:
        listener.close()
    assert proc.returncode == 0, proc.stderr
    batch = json.loads(out.read_text())
    assert (batch["role"], batch["host"]) == ("pio", "pio-1")
    states = {r["port"]: (r["state"], r["mode"]) for r in batch["results"]}
    assert states == {
        open_port: ("open", "connect"),
        refused_port: ("refused", "connect"),
        standin_port: ("open", "connect"),
    }
    assert [(ls["port"], ls["state"]) for ls in batch["listeners"]] == [(standin_port, "listening")]
    assert [p["port"] for p in batch["peers"]] == [standin_port]


def test_isolated_python_really_has_no_site_packages() -> None:
    """The check above means something only if -I -S hides the installed packages."""
    proc = subprocess.run(
        [*ISOLATED, "-c", "import aiohttp"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0 and "No module named 'aiohttp'" in proc.stderr


def test_bad_plan_exits_2(pyz: Path, workdir: Path) -> None:
    bad = workdir / "bad-plan.json"
    bad.write_text(json.dumps({"role": "pio", "host": "pio-1", "unknown": 1}))
    proc = subprocess.run(
        [*ISOLATED, str(pyz), "run", "--plan", str(bad), "--out", str(workdir / "x")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "cannot read plan" in proc.stderr


def _answer(handler: http.server.BaseHTTPRequestHandler, status: int, payload: object) -> None:
    """A JSON answer (a method of the handlers below)."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _quiet(handler: http.server.BaseHTTPRequestHandler, format: str, *args: Any) -> None:
    """No access log on stderr (a method of the handlers below)."""


class Controller:
    """A real HTTP controller in a thread: hands out `plan`, keeps what the agent sends."""

    def __init__(self, plan: dict[str, Any], token: str) -> None:
        self.plan, self.token = plan, token
        self.registrations: list[dict[str, Any]] = []
        self.batches: list[dict[str, Any]] = []
        ctl = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers["Authorization"] != f"Bearer {ctl.token}":
                    self.answer(401, {"error": "bad token"})
                elif self.path == "/api/v1/register":
                    ctl.registrations.append(body)
                    self.answer(200, ctl.plan)
                elif self.path == "/api/v1/results":
                    ctl.batches.append(body)
                    self.answer(200, {"accepted": len(body["results"])})
                else:
                    self.answer(404, {"error": "no such path"})

            answer = _answer
            log_message = _quiet

        self.server: http.server.HTTPServer = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), Handler
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def test_isolated_serve_registers_probes_and_reports(pyz: Path, workdir: Path) -> None:
    """`serve --once` from the archive under `python3 -I -S`, unprivileged, against a real
    controller: stand-in TLS/SSH listeners, probes with their service checks, one report."""
    ports = [free_port() for _ in range(3)]
    services = ("tls", "ssh", "tcp")
    plan = {
        "role": "pio",
        "host": "pio-1",
        "address": "127.0.0.1",
        "listen": [{"port": p, "service": s} for p, s in zip(ports[:2], services, strict=False)],
        "checks": [{**check(p), "service": s} for p, s in zip(ports, services, strict=True)],
        "timeout_s": 2.0,
    }
    token_file = workdir / "token"
    token_file.write_text("pyz-token\n")
    token_file.chmod(0o644)
    argv = [*ISOLATED, str(pyz), "serve", "--token-file", str(token_file), "--once"]
    argv += ["--role", "pio", "--host", "pio-1", "--address", "127.0.0.1", "--splay", "0"]
    with Controller(plan, "pyz-token") as ctl:
        proc = subprocess.run(
            [*argv, "--controller", ctl.url],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=workdir,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
            check=False,
            **as_unprivileged_user(),
        )
    assert proc.returncode == 0, proc.stderr
    assert [r["role"] for r in ctl.registrations] == ["pio"]
    results = {r["port"]: r for b in ctl.batches for r in b["results"]}
    states = {p: results[p]["state"] for p in ports}
    assert states == {ports[0]: "open", ports[1]: "open", ports[2]: "refused"}
    tls = results[ports[0]]["service_check"]
    assert tls["outcome"] == "ok" and "netcheck stand-in" in tls["tls_subject"]
    assert tls["tls_not_after"] > time.time()
    assert results[ports[1]]["service_check"]["outcome"] == "ok"
    listeners = {ls["port"]: ls["state"] for ls in ctl.batches[-1]["listeners"]}
    # Held through the round, released at exit: the final batch says "closed".
    assert listeners == {ports[0]: "closed", ports[1]: "closed"}


class TlsController(Controller):
    """The same controller over HTTPS with certificates from controller/pki.py: enrolment
    with a one-time join token (controller/enrolment.py over a real SQLite file), then
    register/results only with a client certificate naming the host (its serial recorded)."""

    def __init__(self, plan: dict[str, Any], pki_dir: Path) -> None:
        import sqlite3

        from netcheck.controller import enrolment, pki
        from netcheck.controller.joins import IssuedCerts, JoinTokens

        super().__init__(plan, "")
        self.server.server_close()  # the plain HTTP one: replaced below
        self.files = pki.init_ca(pki_dir, ["localhost"], ["127.0.0.1"])
        self.files.ca_cert.chmod(0o644)
        ca = pki.load_ca(pki_dir)
        self.db = sqlite3.connect(str(pki_dir / "joins.db"), check_same_thread=False)
        self.joins = JoinTokens(self.db)
        self.serials: list[int] = []
        hosts = {(plan["role"], plan["host"])}
        ctl = self

        def has(role: str, host: str) -> bool:
            return (role, host) in hosts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/api/v1/enrol":
                    try:
                        req = enrolment.parse_enrol_request(raw)
                        assert req.csr is not None, "this test's agent has openssl"
                        cert = enrolment.enrol(
                            ctl.joins, ca, has, req.token, req.csr, time.time(),
                            host=req.host, role=req.role, issued=IssuedCerts(ctl.db),
                        )  # fmt: skip
                    except enrolment.EnrolError as exc:
                        return self.answer(exc.status, exc.body())
                    return self.answer(
                        200, {"certificate": cert.decode(), "ca": ca.cert_pem.decode()}
                    )
                ident = pki.identity_of(self.connection.getpeercert(binary_form=True))
                body = json.loads(raw)
                if ident is None or (ident.role, ident.host) != (body["role"], body["host"]):
                    return self.answer(401, {"error": "no client certificate for this host"})
                ctl.serials.append(ident.serial)
                if self.path == "/api/v1/register":
                    ctl.registrations.append(body)
                    return self.answer(200, ctl.plan)
                ctl.batches.append(body)
                return self.answer(200, {"accepted": len(body["results"])})

            answer = _answer
            log_message = _quiet

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        ctx = pki.server_context_for(self.files)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    def join_token(self) -> str:
        role, host = self.plan["role"], self.plan["host"]
        return self.joins.issue(role, [host], 600, known=lambda r, h: True, now=time.time())

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.db.close()


def test_isolated_enrol_then_serve_once_over_mutual_tls(pyz: Path, workdir: Path) -> None:
    """The single-file agent enrols like the package (openssl key and CSR, the join token,
    the controller verified with --ca), then serves once over mutual TLS; unprivileged."""
    port = free_port()
    plan = {
        "role": "pio",
        "host": "pio-1",
        "address": "127.0.0.1",
        "listen": [{"port": port, "service": "tls"}],
        "checks": [{**check(port), "service": "tls"}],
        "timeout_s": 2.0,
    }
    state = workdir / "state"
    run = {
        "capture_output": True,
        "text": True,
        "timeout": 60,
        "cwd": workdir,
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
        "check": False,
        **as_unprivileged_user(),
    }
    with TlsController(plan, workdir / "pki") as ctl:
        token = ctl.join_token()
        token_file = workdir / "join-token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o644)  # for nobody; a real site keeps it 0600 for the agent's user
        enrol = subprocess.run(
            [*ISOLATED, str(pyz), "enrol", "--controller", ctl.url, "--ca", str(ctl.files.ca_cert),
             "--join-token-file", str(token_file), "--state-dir", str(state),
             "--role", "pio", "--host", "pio-1"],
            **run,
        )  # fmt: skip
        assert enrol.returncode == 0, enrol.stderr
        assert token not in enrol.stdout + enrol.stderr and "enrolled pio/pio-1" in enrol.stdout
        serve = subprocess.run(
            [*ISOLATED, str(pyz), "serve", "--controller", ctl.url, "--state-dir", str(state),
             "--role", "pio", "--host", "pio-1", "--address", "127.0.0.1", "--once",
             "--splay", "0"],
            **run,
        )  # fmt: skip
    assert serve.returncode == 0, serve.stderr
    identity = state / "agent.pem"
    assert identity.stat().st_mode & 0o777 == 0o600
    if run.get("user") is not None:
        assert identity.stat().st_uid == NOBODY
    assert [r["host"] for r in ctl.registrations] == ["pio-1"]
    assert len(set(ctl.serials)) == 1 and len(ctl.serials) >= 2  # one identity throughout
    [result] = [r for b in ctl.batches for r in b["results"]]
    assert result["state"] == "open" and result["service_check"]["outcome"] == "ok"


@pytest.fixture(scope="module")
def guest_pyz(workdir: Path) -> Path:
    out: Path = zipapp_build.build_guest(workdir / "netcheck-guest.pyz")
    out.chmod(0o644)
    return out


def test_the_guest_archive_holds_only_the_guest_agent(guest_pyz: Path) -> None:
    """Python 3.6+: the guest package, the two __init__ files above it and facts.ps1; not one
    module of the appliance agent (3.11)."""
    import zipfile

    names = set(zipfile.ZipFile(guest_pyz).namelist())
    assert {"__main__.py", "netcheck/__init__.py", "netcheck/agent/__init__.py"} <= names
    assert "netcheck/agent/guest/facts.ps1" in names
    outside = {n for n in names if n.endswith(".py") and "/guest/" not in n}
    assert outside == {"__main__.py", "netcheck/__init__.py", "netcheck/agent/__init__.py"}
    assert "netcheck-guest as one file" in zipfile.ZipFile(guest_pyz).read("__main__.py").decode()
    assert guest_pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")


def test_the_guest_archive_runs_isolated_and_unprivileged(guest_pyz: Path, workdir: Path) -> None:
    proc = subprocess.run(
        [*ISOLATED, str(guest_pyz), "facts", "--json"],
        capture_output=True, text=True, timeout=120, cwd=workdir, check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
        **as_unprivileged_user(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    names = {f["name"] for f in json.loads(proc.stdout)["facts"]}
    assert {"os.name", "boot.matrix", "vmware_tools.running", "iscsi.initrd_module"} <= names
    bad = subprocess.run(
        [*ISOLATED, str(guest_pyz), "serve", "--controller", "ftp://x", "--role", "cloud_vm",
         "--host", "h", "--address", "127.0.0.1", "--token-file", "/dev/null"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "netcheck-guest:" in bad.stderr


def test_the_guest_build_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "deploy/zipapp/build.py"), "--guest", "--out",
         str(tmp_path / "g.pyz")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "the guest agent, Python 3.6+" in proc.stdout and (tmp_path / "g.pyz").is_file()
