"""A small site on loopback for the reload tests: topology, matrix and inventory files that
the tests edit while a real controller process serves them and real agent processes probe.

Addresses: 127.0.0.0/8 only (each PIO on an address of its own, so each holds the same
ports); a vCenter host without an agent, where nothing listens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from port_helpers import free_port
from test_agent_link import MATRIX

REPO = Path(__file__).resolve().parent.parent
TOKEN = "reload-test-agent-token"
PIO_ADDRESSES = {"pio-1": "127.0.0.21", "pio-2": "127.0.0.22", "pio-3": "127.0.0.23"}
VC_ADDRESSES = {"vc-1": "127.0.0.31", "vc-2": "127.0.0.32"}


def _bindable(port: int, addrs: Iterable[str]) -> bool:
    for a in addrs:
        with socket.socket() as s:
            try:
                s.bind((a, port))
            except OSError:
                return False
    return True


def free_range(n: int, addrs: Sequence[str], tries: int = 200) -> int:
    """The first port of `n` consecutive ports free on every address of `addrs`."""
    for _ in range(tries):
        lo = free_port(addrs[0])
        if lo + n <= 65535 and all(_bindable(p, addrs) for p in range(lo, lo + n)):
            return lo
    raise RuntimeError(f"no {n} consecutive free ports")


def topology(pio_ports: Sequence[str], vc_port: int, period_s: float) -> str:
    """pio -> pio on each of `pio_ports` (a port or a range), pio -> vc on `vc_port`."""
    flows = "".join(f'      - {{ports: "{p}", service: tcp}}\n' for p in pio_ports)
    return f"""\
version: 1
matrix: matrix.yaml
policy:
  probe_timeout_seconds: 0.5
  probe_min_timeout_seconds: 0
  probe_period_seconds: {period_s}
roles:
  pio: {{name: PIO, site: on_prem, agent: true}}
  vc: {{name: vCenter, site: on_prem, agent: false}}
interactions:
  - id: 2
    title: pio to vc
    source: pio
    destination: vc
    flows:
      - {{ports: "{vc_port}", service: tcp}}
  - id: 4
    title: pio to pio
    source: pio
    destination: pio
    flows:
{flows}modes:
  deploy:
    title: Deploy
    interactions: [2, 4]
"""


def inventory(pios: Iterable[str], vcs: Iterable[str], duplicate: str | None = None) -> str:
    """The site's hosts; `duplicate`: a second PIO of that name (a broken edit)."""
    lines = ["version: 1", "site: reload-test", "hosts:", "  pio:"]
    lines += [f"    - {{name: {h}, address: {PIO_ADDRESSES[h]}}}" for h in pios]
    if duplicate is not None:
        lines.append(f"    - {{name: {duplicate}, address: 127.0.0.29}}")
    lines.append("  vc:")
    lines += [f"    - {{name: {h}, address: {VC_ADDRESSES[h]}}}" for h in vcs]
    return "\n".join(lines) + "\n"


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """The line number (1-based) of the `nth` line of `text` holding `needle`."""
    hits = [i + 1 for i, ln in enumerate(text.splitlines()) if needle in ln]
    return hits[nth - 1]


class Site:
    """The files, a controller process serving them, agent processes (all stopped by
    :meth:`close`, by their pid)."""

    def __init__(self, tmp: Path, watch_s: float = 0.0) -> None:
        self.tmp = tmp
        self.watch_s = watch_s
        self.topology = tmp / "topology.yaml"
        self.inventory = tmp / "inventory.yaml"
        self.db = tmp / "netcheck.db"
        self.log = tmp / "controller.log"
        (tmp / "matrix.yaml").write_text(MATRIX)
        (tmp / "token").write_text(TOKEN + "\n")
        self.port = free_port()
        self.controller: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            *(sys.executable, "-m", "netcheck.controller", "serve"),
            *("--topology", str(self.topology), "--inventory", str(self.inventory)),
            *("--db", str(self.db), "--listen", f"127.0.0.1:{self.port}"),
            *("--insecure-http", "--token-file", str(self.tmp / "token"), "--open-reads"),
            *("--watch-interval", str(self.watch_s)),
        ]
        with self.log.open("wb") as log:
            self.controller = subprocess.Popen(
                argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, env=_env()
            )
        for _ in range(150):
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the controller did not start: " + self.log.read_text())

    def start_agent(self, host: str) -> subprocess.Popen[bytes]:
        argv = [
            *(sys.executable, "-m", "netcheck.agent", "serve", "--controller", self.url),
            *("--token-file", str(self.tmp / "token"), "--role", "pio", "--host", host),
            *("--address", PIO_ADDRESSES[host], "--mode", "connect", "--splay", "0.3"),
        ]
        with (self.tmp / f"agent-{host}.log").open("wb") as log:
            proc = subprocess.Popen(
                argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, env=_env()
            )
        self.agents[host] = proc
        return proc

    def agent_log(self, host: str) -> str:
        return (self.tmp / f"agent-{host}.log").read_text()

    def hup(self) -> float:
        """SIGHUP to the controller; the time it was sent."""
        assert self.controller is not None
        t0 = time.time()
        self.controller.send_signal(signal.SIGHUP)
        return t0

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            body: bytes = r.read()
            return body

    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.get("/api/v1/report?format=json"))
        return data

    def metric(self, name: str) -> float:
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def stored(self) -> dict[str, float]:
        """check id -> started_at of its newest stored result (read-only, as the controller
        commits)."""
        if not self.db.exists():
            return {}
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return dict(conn.execute("SELECT check_id, started_at FROM results").fetchall())
        finally:
            conn.close()

    def close(self) -> None:
        """The agents first (their last batch still finds the controller), then it."""
        for group in (list(self.agents.values()), [self.controller] if self.controller else []):
            for p in group:
                if p.poll() is None:
                    p.terminate()
            for p in group:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def wait_for(what: str, test: Any, timeout_s: float, every_s: float = 0.2) -> Any:
    """Poll `test()` until it returns something true (returned), or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = test()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s:g} s (last: {last!r})")
