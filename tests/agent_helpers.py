"""Test helpers for the agent: a namespace lab with two routers and nftables rules.

Network safety: every address used here is in 198.18.0.0/15, inside namespaces this
module creates (named ``nct-agent-<pid>-...``), with no link to the host network. The lab
is always torn down by :meth:`Lab.close` (called from a fixture's ``finally``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

from deploy.lab.pathlab import CLIENT as CLIENT  # the lab's addresses, for the tests
from deploy.lab.pathlab import R1_RIGHT as R1_RIGHT
from deploy.lab.pathlab import R2_LEFT as R2_LEFT
from deploy.lab.pathlab import SERVER as SERVER
from deploy.lab.pathlab import PathLab
from netcheck.agent.wire import SERVICES, CheckSpec, ListenSpec, Plan, Service

REPO = Path(__file__).resolve().parent.parent


def root_lab_skip_reason() -> str | None:
    """Why the namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for network namespaces and nftables"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command"
    return None


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=20)


class Lab(PathLab):
    """client -- r1 -- r2 -- server (:class:`deploy.lab.pathlab.PathLab`, named
    ``nct-agent-<pid>-``), with the processes a test starts in them."""

    def __init__(self, icmp_ratelimit: bool = False) -> None:
        super().__init__(f"nct-agent-{os.getpid()}-", icmp_ratelimit)
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Lab:
        super().__enter__()
        return self

    def nft(self, ns_key: str, ruleset: str) -> None:
        subprocess.run(
            ["ip", "netns", "exec", self.ns[ns_key], "nft", "-f", "-"],
            input=ruleset,
            check=True,
            capture_output=True,
            text=True,
            timeout=20,
        )

    def spawn(
        self, ns_key: str, argv: Sequence[str], stderr: Path | None = None
    ) -> subprocess.Popen[bytes]:
        with open(stderr or os.devnull, "wb") as err:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns[ns_key], *argv],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.procs.append(proc)
        return proc

    def run(
        self, ns_key: str, argv: Sequence[str], timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns[ns_key], *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.procs.clear()
        super().close()


PYTHON = sys.executable

LISTEN_SCRIPT = """
import socket, sys, time
socks = []
for port in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    s.listen(64)
    socks.append(s)
time.sleep(120)
"""


ALL_SERVICES: tuple[Service, ...] = (
    "ssh",
    "tls",
    "https",
    "docker",
    "vsphere",
    "authd",
    "iscsi",
    "tcp",
)


def self_plan(ports: Sequence[int], addr: str) -> Plan:
    """A plan that holds ``ports`` (every kind of service in turn) and probes each of them on
    its own address: the footprint measurements' busiest-agent stand-in."""
    listen = tuple(
        ListenSpec(port=p, service=cast(Service, SERVICES[i % len(SERVICES)]))
        for i, p in enumerate(ports)
    )
    checks = tuple(
        CheckSpec(
            check_id=f"1:a>a:{s.port}",
            interaction=1,
            dst_role="a",
            dst_host="a",
            dst_address=addr,
            port=s.port,
            service=s.service,
        )
        for s in listen
    )
    return Plan(role="a", host="a", address=addr, listen=listen, checks=checks, period_s=3600)


@contextlib.contextmanager
def full_backlog_listener(addr: str = "127.0.0.1") -> Iterator[tuple[socket.socket, int]]:
    """A listener that never accepts, its backlog filled: further SYNs to it are dropped
    (a silent port on loopback) until the test accepts or closes it."""
    server = socket.socket()
    server.bind((addr, 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    fillers = []
    try:
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex((addr, port))
            fillers.append(c)
        time.sleep(0.2)
        yield server, port
    finally:
        for c in fillers:
            c.close()
        server.close()
