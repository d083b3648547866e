"""The Ansible role placing agents (deploy/ansible): lint, syntax, and a real local run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
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


@pytest.mark.slow
@needs_playbook
def test_role_lays_down_the_agent_and_is_idempotent(tmp_path: Path) -> None:
    """Apply the real playbook to this machine, into a scratch tree, twice."""
    assert PLAYBOOK is not None
    pyz = tmp_path / "netcheck-agent.pyz"
    pyz.write_bytes(b"#!/usr/bin/env python3\n")  # the role copies it; its content is not used
    root = tmp_path / "root"
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "ansible_become": False,
        "netcheck_agent_role": "pio",
        "netcheck_agent_controller_url": "http://127.0.0.1:8080",
        "netcheck_agent_address": "127.18.1.10",
        "netcheck_agent_pyz": str(pyz),
        "netcheck_agent_bin": str(root / "bin" / "netcheck-agent"),
        "netcheck_agent_config_dir": str(root / "etc"),
        "netcheck_agent_unit_dir": str(root / "units"),
        "netcheck_agent_manage_service": False,
        "netcheck_agent_token": "test-token-not-a-secret",
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
        assert "test-token-not-a-secret" not in out.stdout + out.stderr
        return out.stdout

    first = play()
    assert re.search(r"pio-1\s+: ok=\d+\s+changed=[1-9]", first), first[-1500:]
    envfile = (root / "etc" / "agent-pio.env").read_text()
    assert "NETCHECK_ROLE=pio\n" in envfile
    assert "NETCHECK_HOST=pio-1\n" in envfile
    assert "NETCHECK_CONTROLLER=http://127.0.0.1:8080\n" in envfile
    token = root / "etc" / "agent-token"
    assert token.read_text() == "test-token-not-a-secret\n"
    assert token.stat().st_mode & 0o777 == 0o600
    assert (root / "bin" / "netcheck-agent").stat().st_mode & 0o111
    unit = REPO / "deploy" / "systemd" / "netcheck-agent@.service"
    assert (root / "units" / "netcheck-agent@.service").read_text() == unit.read_text()

    second = play()
    assert re.search(r"pio-1\s+: ok=\d+\s+changed=0\s", second), second[-1500:]
