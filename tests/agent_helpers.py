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

from netcheck.agent.wire import SERVICES, CheckSpec, ListenSpec, Plan, Service

REPO = Path(__file__).resolve().parent.parent

CLIENT = "198.18.1.2"
R1_LEFT, R1_RIGHT = "198.18.1.1", "198.18.2.1"
R2_LEFT, R2_RIGHT = "198.18.2.2", "198.18.3.1"
SERVER = "198.18.3.2"


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


class Lab:
    """client -- r1 -- r2 -- server, each in its own namespace, routed over 198.18/15."""

    def __init__(self, icmp_ratelimit: bool = False) -> None:
        """With `icmp_ratelimit`, the routers keep the kernel's ICMP rate limiting
        (net.ipv4.icmp_ratelimit, icmp_msgs_per_sec: the namespace's defaults)."""
        self.icmp_ratelimit = icmp_ratelimit
        prefix = f"nct-agent-{os.getpid()}-"
        self.ns = {name: prefix + name for name in ("c", "r1", "r2", "s")}
        self.created: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        c, r1, r2, s = (self.ns[k] for k in ("c", "r1", "r2", "s"))
        links = [(c, "v0", CLIENT, r1, "v0", R1_LEFT), (r1, "v1", R1_RIGHT, r2, "v0", R2_LEFT)]
        links.append((r2, "v1", R2_RIGHT, s, "v0", SERVER))
        for a, a_if, a_ip, b, b_if, b_ip in links:
            sh("ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)
            for ns, ifname, ip in ((a, a_if, a_ip), (b, b_if, b_ip)):
                sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ifname)
                sh("ip", "-n", ns, "link", "set", ifname, "up")
        for router in (r1, r2):
            sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            # Routers rate-limit ICMP errors per peer; a lab traceroute of many ports needs all.
            if not self.icmp_ratelimit:
                sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
        sh("ip", "-n", c, "route", "add", "default", "via", R1_LEFT)
        sh("ip", "-n", r1, "route", "add", "198.18.3.0/24", "via", R2_LEFT)
        sh("ip", "-n", r2, "route", "add", "198.18.1.0/24", "via", R1_RIGHT)
        sh("ip", "-n", s, "route", "add", "default", "via", R2_RIGHT)

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
        for ns in reversed(self.created):
            sh("ip", "netns", "delete", ns, check=False)
        self.created.clear()


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


# A stand-in controller for one agent (stdlib only): answers registration with the plan in
# argv[2], appends every results batch to argv[3] (one JSON line each). Port argv[1].
FAKE_CONTROLLER = """
import http.server, sys
plan, out = open(sys.argv[2], "rb").read(), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/api/v1/results":
            with open(out, "ab") as f:
                f.write(body + b"\\n")
            answer = b'{"accepted": 0}'
        else:
            answer = plan
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
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
