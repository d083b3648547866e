"""The Ansible role placing agents (deploy/ansible): lint, syntax, and a real local run."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ANSIBLE = REPO / "deploy" / "ansible"
LINT = shutil.which("ansible-lint")
PLAYBOOK = shutil.which("ansible-playbook")
needs_playbook = pytest.mark.skipif(
    PLAYBOOK is None, reason="ansible-playbook is not installed (pip install ansible-core)"
)


def env() -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": "/tmp",
        "NO_COLOR": "1",
    }


@pytest.mark.skipif(LINT is None, reason="ansible-lint is not installed (pip install ansible-lint)")
def test_ansible_lint_production_profile() -> None:
    assert LINT is not None
    out = subprocess.run(
        [LINT, "--offline", "--nocolor", "--profile", "production", "playbook.yml", "roles/"],
        cwd=ANSIBLE,
        capture_output=True,
        text=True,
        timeout=300,
        env=env(),
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@needs_playbook
def test_syntax_check() -> None:
    assert PLAYBOOK is not None
    out = subprocess.run(
        [PLAYBOOK, "--syntax-check", "-i", "inventory.example.yml", "playbook.yml"],
        cwd=ANSIBLE,
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_env_template_writes_what_the_unit_reads() -> None:
    template = (ANSIBLE / "roles" / "netcheck_agent" / "templates" / "agent.env.j2").read_text()
    written = set(re.findall(r"^(NETCHECK_\w+)=", template, re.M))
    unit = (REPO / "deploy" / "systemd" / "netcheck-agent@.service").read_text()
    assert written == set(re.findall(r"\$\{(NETCHECK_\w+)\}", unit))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def controller(
    tmp_path: Path, role: str = "pio", name: str = "pio-1", address: str = "127.18.1.10"
) -> Iterator[tuple[str, Path, str]]:
    """A real controller on HTTPS (a CA from the project's own `ca init`): (URL, its CA file,
    one join token for the host `name` of `role` from `netcheck-controller enrol`)."""
    import time
    import urllib.request

    site = tmp_path / "site"
    site.mkdir()
    inv = site / "inventory.yaml"
    inv.write_text(
        f"version: 1\nsite: t\nhosts:\n  {role}:\n    - {{name: {name}, address: {address}}}\n"
    )
    ctl = [sys.executable, "-m", "netcheck.controller"]
    files = ["--topology", str(REPO / "topology.yaml"), "--inventory", str(inv)]
    db = str(site / "netcheck.db")
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=60, check=True)
    run([*ctl, "ca", "init", "--pki", str(site / "pki"), "--address", "127.0.0.1"])
    out = run([*ctl, "enrol", "--db", db, *files, "--role", role, "--host", name]).stdout
    host, token = out.split()
    assert host == name
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    serve = [*ctl, "serve", *files, "--db", db, "--listen", f"127.0.0.1:{port}"]
    serve += ["--pki", str(site / "pki"), "--open-reads"]
    proc = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ca = site / "pki" / "ca.pem"
        context = ssl.create_default_context(cafile=str(ca))
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1, context=context).close()
                break
            except OSError:
                time.sleep(0.1)
        yield url, ca, token
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
@needs_playbook
def test_role_lays_down_the_agent_and_is_idempotent(tmp_path: Path) -> None:
    """Apply the real playbook to this machine, into a scratch tree, twice: the first run
    installs the CA, writes the join token (0600) and enrols against a real controller (the
    agent makes its key); the second changes nothing (the certificate is there)."""
    assert PLAYBOOK is not None
    # the "single-file agent" the role copies: the real agent of this checkout
    pyz = tmp_path / "netcheck-agent.pyz"
    pyz.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m netcheck.agent "$@"\n')
    root = tmp_path / "root"
    with controller(tmp_path) as (url, ca, token):
        host = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "ansible_become": False,
            "netcheck_agent_role": "pio",
            "netcheck_agent_controller_url": url,
            "netcheck_agent_ca_file": str(ca),
            "netcheck_agent_address": "127.18.1.10",
            "netcheck_agent_pyz": str(pyz),
            "netcheck_agent_bin": str(root / "bin" / "netcheck-agent"),
            "netcheck_agent_config_dir": str(root / "etc"),
            "netcheck_agent_state_dir": str(root / "state" / "pio"),
            "netcheck_agent_unit_dir": str(root / "units"),
            "netcheck_agent_manage_service": False,
            "netcheck_agent_join_token": token,
        }
        (root / "bin").mkdir(parents=True)
        (root / "units").mkdir()
        inventory = tmp_path / "inventory.json"
        inventory.write_text(json.dumps({"netcheck_agents": {"hosts": {"pio-1": host}}}))

        def play() -> str:
            out = subprocess.run(
                [PLAYBOOK, "-i", str(inventory), str(ANSIBLE / "playbook.yml")],
                cwd=ANSIBLE,
                capture_output=True,
                text=True,
                timeout=300,
                env=env(),
                check=False,
            )
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
            assert token not in out.stdout + out.stderr
            return out.stdout

        first = play()
        assert re.search(r"pio-1\s+: ok=\d+\s+changed=[1-9]", first), first[-1500:]
        envfile = (root / "etc" / "agent-pio.env").read_text()
        assert "NETCHECK_ROLE=pio\n" in envfile
        assert "NETCHECK_HOST=pio-1\n" in envfile
        assert f"NETCHECK_CONTROLLER={url}\n" in envfile
        join = root / "etc" / "agent-pio.join-token"
        assert join.read_text() == token + "\n"
        assert join.stat().st_mode & 0o777 == 0o600
        assert (root / "etc" / "ca.pem").read_bytes() == ca.read_bytes()
        state = root / "state" / "pio"
        assert state.stat().st_mode & 0o777 == 0o700
        identity = state / "agent.pem"
        assert identity.stat().st_mode & 0o777 == 0o600
        assert b"BEGIN CERTIFICATE" in identity.read_bytes()
        assert (root / "bin" / "netcheck-agent").stat().st_mode & 0o111
        unit = REPO / "deploy" / "systemd" / "netcheck-agent@.service"
        assert (root / "units" / "netcheck-agent@.service").read_text() == unit.read_text()

        second = play()  # the token is spent: a second enrolment would fail the play
        assert re.search(r"pio-1\s+: ok=\d+\s+changed=0\s", second), second[-1500:]


@pytest.mark.skipif(LINT is None, reason="ansible-lint is not installed (pip install ansible-lint)")
def test_ansible_lint_the_guest_playbook() -> None:
    assert LINT is not None
    out = subprocess.run(
        [LINT, "--offline", "--nocolor", "--profile", "production", "guests.yml"],
        cwd=ANSIBLE, capture_output=True, text=True, timeout=300, env=env(), check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


SYSTEM_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def _guest_play(
    inventory: Path, extra: dict[str, object] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [PLAYBOOK or "ansible-playbook", "-i", str(inventory), str(ANSIBLE / "guests.yml")]
    if extra:
        argv += ["-e", json.dumps(extra)]
    return subprocess.run(
        argv, cwd=ANSIBLE, capture_output=True, text=True, timeout=300, env=env(), check=False
    )


@pytest.mark.slow
@needs_playbook
def test_guest_role_installs_the_single_file_with_the_systems_python(tmp_path: Path) -> None:
    """The guest play on this machine, into a scratch tree, twice: the real
    netcheck-guest.pyz copied, run by the system's python3 (found by the role, no
    virtualenv), enrolled against a real controller, a systemd unit naming that python; the
    second run changes nothing. A guest with no Python 3.6+ stops with the README's advice."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "netcheck_zipapp_build_g", REPO / "deploy" / "zipapp" / "build.py"
    )
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build
    spec.loader.exec_module(build)
    pyz = build.build_guest(tmp_path / "netcheck-guest.pyz")
    root = tmp_path / "root"
    (root / "units").mkdir(parents=True)
    (root / "bin").mkdir()
    with controller(tmp_path, "cloud_vm", "cloud-vm-1", "127.18.2.101") as (url, ca, token):
        host = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "ansible_become": False,
            "netcheck_guest_role": "cloud_vm",
            "netcheck_guest_controller_url": url,
            "netcheck_guest_ca_file": str(ca),
            "netcheck_guest_address": "127.18.2.101",
            "netcheck_guest_pyz": str(pyz),
            "netcheck_guest_pyz_dest": str(root / "lib" / "netcheck-guest.pyz"),
            "netcheck_guest_bin": str(root / "bin" / "netcheck-guest"),
            "netcheck_guest_pythons": ["/nonexistent/python3", SYSTEM_PYTHON],
            "netcheck_guest_config_dir": str(root / "etc"),
            "netcheck_guest_state_dir": str(root / "state"),
            "netcheck_guest_unit_dir": str(root / "units"),
            "netcheck_guest_manage_service": False,
            "netcheck_guest_join_token": token,
        }
        inventory = tmp_path / "inventory.json"
        inventory.write_text(json.dumps({"netcheck_guests": {"hosts": {"cloud-vm-1": host}}}))
        first = _guest_play(inventory)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert token not in first.stdout + first.stderr
        assert re.search(r"cloud-vm-1\s+: ok=\d+\s+changed=[1-9]", first.stdout)
        dest = root / "lib" / "netcheck-guest.pyz"
        assert dest.read_bytes() == pyz.read_bytes() and dest.stat().st_mode & 0o777 == 0o644
        identity = root / "state" / "agent.pem"
        assert identity.stat().st_mode & 0o777 == 0o600
        assert b"BEGIN CERTIFICATE" in identity.read_bytes()
        assert (root / "state").stat().st_mode & 0o777 == 0o700
        assert (root / "etc" / "guest.join-token").stat().st_mode & 0o777 == 0o600
        unit = (root / "units" / "netcheck-guest.service").read_text()
        found = shutil.which(SYSTEM_PYTHON) or SYSTEM_PYTHON
        assert f"ExecStart={found} {dest} serve --controller {url} --role cloud_vm" in unit
        assert "--host cloud-vm-1 --address 127.18.2.101 --state-dir" in unit
        directives = [line.split("=", 1)[0] for line in unit.splitlines() if "=" in line]
        for newer in ("StateDirectory", "LoadCredential", "DynamicUser"):  # systemd 219
            assert newer not in directives
        facts = subprocess.run(
            [str(root / "bin" / "netcheck-guest"), "facts", "--json"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert any(f["name"] == "os.name" for f in json.loads(facts.stdout)["facts"])
        second = _guest_play(inventory)
        assert second.returncode == 0, second.stdout[-3000:]
        assert re.search(r"cloud-vm-1\s+: ok=\d+\s+changed=0\s", second.stdout), second.stdout
        none = _guest_play(inventory, {"netcheck_guest_pythons": ["/nonexistent/python3"]})
        assert none.returncode != 0
        assert "has no Python 3.6 or newer" in none.stdout
        assert "optional repositories (rh-python36) or EPEL" in none.stdout
