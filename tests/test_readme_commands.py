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


# Lines that set up or serve the site (they name /etc and /var paths): run by the online test.
SITE_SETUP = ("serve", "ca", "enrol", "revoke")


def _online(words: list[str]) -> bool:
    return words[0] == "netcheck-agent" or words[1] in SITE_SETUP or "--controller" in words


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
        _assert_answered(words, done)
        assert done.stderr == "", (line, done.stderr)
        ran += 1
    assert ran >= 5


def _assert_answered(words: list[str], done: subprocess.CompletedProcess[str]) -> None:
    """0 for every command; a gate answers go (0), no-go (1) or, when nothing it needs has been
    tested yet, undecided (2, and says so on stdout: an error would say so on stderr)."""
    if words[1] == "gate" and done.returncode == 2:
        assert " UNDECIDED\n" in done.stdout.splitlines(keepends=True)[0], (words, done.stdout)
        return
    allowed = (0, 1) if words[1] == "gate" else (0,)
    assert done.returncode in allowed, (words, done.stderr)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_controller_commands_run_against_a_real_controller(site: Path) -> None:
    """ca init, serve --pki, enrol, report/gate --controller: on 127.0.0.1, paths in tmp_path.

    Absolute paths move under the test's directory (``/etc/netcheck/pki`` becomes
    ``<tmp>/etc/netcheck/pki``), the controller's URL and listen address to a free port.
    """
    import ssl

    port = _free_port()
    url = f"https://127.0.0.1:{port}"

    def local(word: str) -> str:
        if word.startswith("https://"):
            return url
        if word == "0.0.0.0:8443":
            return f"127.0.0.1:{port}"
        if word == "controller":  # ca init --name: the test reaches it as 127.0.0.1
            return "localhost"
        if word == "198.18.0.10":
            return "127.0.0.1"
        if word.startswith("/"):
            path = site / word.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            return str(path)
        return word

    lines = [[local(w) for w in shlex.split(c)] for c in readme_commands()]
    controller = [w for w in lines if w[0] == "netcheck-controller"]
    ca_init = [w for w in controller if w[1:3] == ["ca", "init"]]
    serve = [w for w in controller if w[1] == "serve"]
    enrol = [w for w in controller if w[1] == "enrol"]
    clients = [w for w in controller if "--controller" in w]
    assert ca_init and serve and enrol and clients
    done = _controller(ca_init[0], site)
    assert done.returncode == 0 and "SHA-256 fingerprint" in done.stdout, done.stderr
    pki = Path(serve[0][serve[0].index("--pki") + 1])
    read_token = Path(serve[0][serve[0].index("--read-token-file") + 1])
    read_token.write_text("readme-read-token-0123456789\n")
    os.chmod(read_token, 0o600)
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
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
                    with urllib.request.urlopen(f"{url}/healthz", timeout=1, context=context):
                        break
                except OSError:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    time.sleep(0.1)
            for words in enrol:
                done = _controller(words, site)
                assert done.returncode == 0, (words, done.stderr)
                (line,) = done.stdout.splitlines()
                assert line.split()[0] == words[words.index("--host") + 1]
            for words in clients:
                done = _controller(words, site)
                _assert_answered(words, done)
                assert done.stderr == "", (words, done.stderr)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
