"""Every ``netcheck-controller`` command line in README.md's shell blocks runs as written.

The offline ones (check, plan, import, report --db, gate --db) run word for word in a fresh
directory holding what a user has there: the checkout's ``topology.yaml`` and matrix, and
``site.yaml`` copied from ``inventory.example.yaml``. ``netcheck-agent`` lines are not run
(an agent would probe the example's addresses): their ``--out`` file is written from the
plan the README's ``plan`` line made. The lines that need a controller run against a real
``serve`` on 127.0.0.1, with only the addresses and the absolute paths changed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from netcheck.agent.wire import ProbeResult, ResultBatch, encode

REPO = Path(__file__).resolve().parent.parent
COMMAND = re.compile(r"^(netcheck-controller|netcheck-agent)\s")


def readme_commands() -> list[str]:
    """The command lines of README.md's ``sh`` blocks, continuations joined, comments cut."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words and COMMAND.match(" ".join(words)):
                out.append(" ".join(shlex.quote(w) for w in words))
    return out


def _online(words: list[str]) -> bool:
    return words[0] == "netcheck-agent" or words[1] == "serve" or "--controller" in words


def _controller(words: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    assert words[0] == "netcheck-controller"
    return subprocess.run(
        [sys.executable, "-m", "netcheck.controller", *words[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _offline_agent_run(words: list[str], cwd: Path) -> None:
    """What ``netcheck-agent run --plan P --out R`` leaves behind: every check answered."""
    plan_file = words[words.index("--plan") + 1]
    plan = json.loads((cwd / plan_file).read_text())
    now = time.time()
    results = tuple(
        ProbeResult(
            check_id=c["check_id"],
            interaction=c["interaction"],
            src_host=plan["host"],
            src_address=plan["address"],
            dst_host=c["dst_host"],
            dst_address=c["dst_address"],
            port=c["port"],
            state="open",
            mode="connect",
            attempts=1,
            started_at=now - 5,
            latency_s=0.001,
        )
        for c in plan["checks"]
    )
    batch = ResultBatch(plan["role"], plan["host"], results=results, sent_at=now)
    (cwd / words[words.index("--out") + 1]).write_text(json.dumps(encode(batch)))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    for name in ("topology.yaml", "guest_os_matrix.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copy(REPO / "inventory.example.yaml", tmp_path / "site.yaml")
    return tmp_path


def test_readme_has_the_offline_commands() -> None:
    subcommands = {shlex.split(c)[1] for c in readme_commands() if not _online(shlex.split(c))}
    assert {"check", "plan", "import", "report", "gate"} <= subcommands


def test_offline_commands_run_as_written(site: Path) -> None:
    ran = 0
    for line in readme_commands():
        words = shlex.split(line)
        if words[0] == "netcheck-agent" and words[1] == "run":
            _offline_agent_run(words, site)
            continue
        if _online(words):
            continue
        done = _controller(words, site)
        allowed = (0, 1) if words[1] == "gate" else (0,)  # a gate answers go or no-go
        assert done.returncode in allowed, (line, done.stderr)
        assert done.stderr == "", (line, done.stderr)
        ran += 1
    assert ran >= 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_controller_commands_run_against_a_real_controller(site: Path) -> None:
    """serve, report --controller and gate --controller, moved to 127.0.0.1 and tmp_path."""
    url = f"http://127.0.0.1:{_free_port()}"
    listen = url.removeprefix("http://")

    def local(word: str) -> str:
        if word.startswith("http://"):
            return url
        if word == "0.0.0.0:8080":
            return listen
        return str(site / Path(word).name) if word.startswith("/") else word

    lines = [shlex.split(c) for c in readme_commands()]
    serve = [[local(w) for w in words] for words in lines if words[1:2] == ["serve"]]
    clients = [
        [local(w) for w in words]
        for words in lines
        if words[0] == "netcheck-controller" and "--controller" in words
    ]
    assert serve and clients and serve[0][0] == "netcheck-controller"
    (site / "token").write_text("readme-token-0123456789\n")
    os.chmod(site / "token", 0o600)
    with subprocess.Popen(
        [sys.executable, "-m", "netcheck.controller", *serve[0][1:]],
        cwd=site,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as proc:
        try:
            for _ in range(100):
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                        break
                except OSError:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    time.sleep(0.1)
            for words in clients:
                done = _controller(words, site)
                allowed = (0, 1) if words[1] == "gate" else (0,)
                assert done.returncode in allowed, (words, done.stderr)
                assert done.stderr == "", (words, done.stderr)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
