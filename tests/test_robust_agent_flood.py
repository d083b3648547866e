"""A root agent in SYN mode under a 10,000-connection flood at its stand-in listeners, while it
probes: it stays up, its rounds go on and reach the controller, its connections stay under
the caps, and its RSS is measured against the 40 MB budget.

Everything runs in a network namespace of its own with only loopback (127.0.0.0/8): the
controller (a real ``netcheck-controller serve`` process), the agent (``serve --mode syn``),
and the flooder, which raises its own RLIMIT_NOFILE, opens 10,000 connections from 20 source
addresses, holds them a few seconds and exits by itself. Run under
``flock /tmp/netcheck-netns.lock``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import REPO, root_lab_skip_reason, sh
from test_agent_link import AGENT_ADDR, TOKEN, write_site

from netcheck.controller.store import Store

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(root_lab_skip_reason() is not None, reason=str(root_lab_skip_reason())),
]

PY = sys.executable
CONTROLLER_PORT = 18080
HEALTH_PORT = 19101
LISTEN_PORT = 2222
VC_PORT = 4443
FLOOD = 10_000

FLOODER = """
import resource, socket, sys, time
n, sources, dst = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
port, hold = int(sys.argv[4]), float(sys.argv[5])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1024, n + 1024))
socks = []
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.bind((f"127.0.1.{1 + i % sources}", 0))
    s.connect_ex((dst, port))
    socks.append(s)
    if i % 500 == 499:
        time.sleep(0.02)
time.sleep(hold)
for s in socks:
    s.close()
print(len(socks))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"nct-flood-{os.getpid()}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        sh("ip", "netns", "delete", name, check=False)


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    got = {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}
    return got["VmRSS"], got["VmHWM"]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def health(ns: str, path: str) -> str:
    code = (
        "import urllib.request,sys;"
        f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{HEALTH_PORT}{path}',"
        "timeout=5).read().decode())"
    )
    return subprocess.run(
        in_ns(ns, PY, "-c", code), capture_output=True, text=True, timeout=15, check=True
    ).stdout


def stored_rounds(db: Path) -> list[float]:
    store = Store.open(db)
    try:
        return sorted(r.started_at for r in store.results())
    finally:
        store.close()


def test_syn_agent_survives_a_10000_connection_flood(netns: str, tmp_path: Path) -> None:
    topology, inventory = write_site(
        tmp_path, [(LISTEN_PORT, "ssh")], VC_PORT, period_s=1, pio_hosts={"pio-1": AGENT_ADDR}
    )
    (tmp_path / "token").write_text(TOKEN + "\n")
    db = tmp_path / "controller.sqlite"
    log_c, log_a = (tmp_path / "controller.log").open("w"), (tmp_path / "agent.log").open("w")
    ctl = subprocess.Popen(
        in_ns(
            netns,
            *(PY, "-m", "netcheck.controller", "serve", "--topology", str(topology)),
            *("--inventory", str(inventory), "--db", str(db), "--insecure-http"),
            *("--token-file", str(tmp_path / "token"), "--open-reads"),
            *("--listen", f"127.0.0.1:{CONTROLLER_PORT}"),
        ),
        cwd=REPO,
        stdout=log_c,
        stderr=subprocess.STDOUT,
    )
    agent: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(1.5)
        agent = subprocess.Popen(
            in_ns(
                netns,
                *(PY, "-m", "netcheck.agent", "serve"),
                *("--controller", f"http://127.0.0.1:{CONTROLLER_PORT}"),
                *("--token-file", str(tmp_path / "token"), "--role", "pio", "--host", "pio-1"),
                *("--address", AGENT_ADDR, "--mode", "syn", "--splay", "0"),
                *("--health-listen", f"127.0.0.1:{HEALTH_PORT}"),
                *("--spool-dir", str(tmp_path / "spool")),
            ),
            cwd=REPO,
            stdout=log_a,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not stored_results(db):
            time.sleep(0.3)
        assert stored_results(db), (tmp_path / "agent.log").read_text()[-3000:]
        _, hwm_before = rss_kib(agent.pid)
        flood_start = time.time()
        flooder = subprocess.Popen(
            in_ns(netns, PY, "-c", FLOODER, str(FLOOD), "20", AGENT_ADDR, str(LISTEN_PORT), "6"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        peak_rss, peak_fds = 0, 0
        while flooder.poll() is None and time.time() - flood_start < 60:
            peak_rss = max(peak_rss, rss_kib(agent.pid)[0])
            peak_fds = max(peak_fds, fd_count(agent.pid))
            time.sleep(0.1)
        out, err = flooder.communicate(timeout=30)
        assert out.strip() == str(FLOOD), err
        assert agent.poll() is None, (tmp_path / "agent.log").read_text()[-3000:]
        metrics = health(netns, "/metrics")
        # Rounds went on during and after the flood, and were stored.
        time.sleep(3)
        after = [t for t in stored_rounds(db) if t > flood_start]
        assert after, "no round was stored after the flood began"
        _, hwm = rss_kib(agent.pid)
        assert agent.poll() is None
    finally:
        for proc in (agent, ctl):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        log_c.close()
        log_a.close()
    capped = sum(
        float(v)
        for v in re.findall(
            r"^netcheck_agent_standin_connections_capped_total\S* (\S+)$", metrics, re.M
        )
    )
    text = (tmp_path / "agent.log").read_text()
    print(
        f"\nflood of {FLOOD}: agent peak RSS {peak_rss / 1024:.1f} MiB (VmHWM {hwm / 1024:.1f} "
        f"MiB, {hwm_before / 1024:.1f} before the flood), peak fds {peak_fds}, "
        f"connections closed at a cap {capped:.0f}, rounds stored after the flood began "
        f"{len(after)}"
    )
    assert "Traceback" not in text and "out of range" not in text, text[-3000:]
    assert capped > 0  # the caps were met, and held
    assert peak_fds < 512 + 200
    # The flood itself costs almost nothing (before the caps: 68 MB under the flood), and
    # the SYN-mode agent stays inside its 40 MB budget (it reads replies by hand: importing
    # scapy to dissect them cost 32 MiB, 26 -> 58 MiB).
    assert hwm - hwm_before < 4 * 1024, f"the flood cost {hwm - hwm_before} KiB"
    assert hwm < 40 * 1024, f"peak RSS {hwm} KiB is over the 40 MB budget"


def stored_results(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        return bool(stored_rounds(db))
    except Exception:
        return False
