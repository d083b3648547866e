"""The probe registry, the service-check table, and the check's one deadline, on real
listeners on 127.0.0.x (no root needed).

The caller owns the timeout: a check (connect attempts and protocol check together) is done
within ``timeout_s``, whatever the peer does after accepting.
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import get_args

import pytest
from agent_helpers import full_backlog_listener

from netcheck.agent.probes import RUNNERS, SERVICE_CHECKS, ProbeOptions, connect, syn
from netcheck.agent.wire import SERVICES, CheckSpec, ProbeMode, ProbeResult, Service
from netcheck.controller.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
ADDR = "127.0.0.31"
# Slack on top of the timeout: generous, so a loaded machine does not fail the test, and
# well under what a protocol check with its own timeout on top would add.
SLACK_S = 0.5


def check(port: int, service: Service) -> CheckSpec:
    return CheckSpec(
        check_id=f"1:a>b:{port}:{service}",
        interaction=1,
        dst_role="b",
        dst_host="b",
        dst_address=ADDR,
        port=port,
        service=service,
    )


def test_every_probe_mode_has_a_runner_with_the_round_signature() -> None:
    assert set(RUNNERS) == set(get_args(ProbeMode))
    assert RUNNERS["connect"] is connect.run and RUNNERS["syn"] is syn.run
    for runner in RUNNERS.values():
        assert inspect.iscoroutinefunction(runner)
        assert list(inspect.signature(runner).parameters) == ["checks", "opts", "concurrency"]


def test_every_service_the_topology_uses_has_a_check() -> None:
    used = {ref.flow.service for ref in load_spec(REPO / "topology.yaml").flows()}
    assert used == set(SERVICES)  # the topology uses every service the wire knows
    assert set(SERVICE_CHECKS) == set(SERVICES)
    # Plain tcp is the connect alone; every other service checks something.
    assert [s for s, how in SERVICE_CHECKS.items() if not how.checks_anything] == ["tcp"]
    tls = {s for s, how in SERVICE_CHECKS.items() if how.tls}
    assert tls == {"tls", "https", "docker", "vsphere"}
    for service, how in SERVICE_CHECKS.items():
        assert bool(how.exchange) == bool(how.waits_for), service


@pytest.fixture
async def silent_listener() -> AsyncIterator[int]:
    """A listener that accepts every connection and never says or reads anything."""
    release = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await asyncio.start_server(hold, ADDR, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_a_peer_that_accepts_and_stays_silent_costs_one_timeout(
    silent_listener: int,
) -> None:
    opts = ProbeOptions("a", ADDR, timeout_s=1.0, retries=2)
    services = [s for s in SERVICE_CHECKS if s != "tcp"]

    async def timed(service: Service) -> tuple[float, Service, ProbeResult]:
        t0 = time.monotonic()
        res = await connect.probe(check(silent_listener, service), opts)
        return time.monotonic() - t0, service, res

    for took, service, res in await asyncio.gather(*(timed(s) for s in services)):
        assert took < opts.timeout_s + SLACK_S, (service, took)
        assert res.state == "open" and res.attempts == 1, (service, res)
        sc = res.service_check
        assert sc is not None and sc.outcome == "error", (service, sc)
        assert sc.detail.startswith("no answer within "), sc.detail
        step = SERVICE_CHECKS[service].waits_for if not SERVICE_CHECKS[service].tls else ""
        assert sc.detail.endswith(step or "waiting for the TLS handshake"), sc.detail


@pytest.fixture
def late_listener() -> Iterator[tuple[socket.socket, int]]:
    """A listener whose backlog is full (SYNs are dropped) until the test frees it."""
    with full_backlog_listener(ADDR) as listener:
        yield listener


def _drain(server: socket.socket) -> None:
    """Accept and close every queued connection: the backlog has room again."""
    server.setblocking(False)
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return
        conn.close()


async def test_a_late_connect_leaves_the_protocol_check_only_what_is_left(
    late_listener: tuple[socket.socket, int],
) -> None:
    """The SYNs of the first second are dropped; a later attempt connects, then the peer says
    nothing. The SSH banner wait gets the rest of the 2 s, not 2 s more."""
    server, port = late_listener
    opts = ProbeOptions("a", ADDR, timeout_s=2.0, retries=2)
    loop = asyncio.get_running_loop()
    loop.call_later(0.9, _drain, server)
    t0 = time.monotonic()
    res = await connect.probe(check(port, "ssh"), opts)
    took = time.monotonic() - t0
    assert res.state == "open", res
    assert res.attempts >= 2  # the first SYN was dropped: the connection came late
    assert res.service_check is not None and res.service_check.outcome == "error"
    assert "waiting for the SSH banner" in res.service_check.detail
    assert took < opts.timeout_s + SLACK_S, took
    assert took > opts.timeout_s - 0.1, took  # the banner was waited for until the deadline


def _make_cert(tmp_path: Path) -> tuple[Path, Path]:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(exe, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2"),
            *("-subj", "/O=Example/CN=vcenter.example"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture
def slow_tls_listener(tmp_path: Path) -> Iterator[int]:
    """A TLS server (not a netcheck stand-in) that shakes hands only after 1.2 s, then stays
    silent: the handshake and the HTTP request over it share one budget."""
    cert, key = _make_cert(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = socket.create_server((ADDR, 0))
    port = int(server.getsockname()[1])
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        try:
            time.sleep(1.2)
            with ctx.wrap_socket(conn, server_side=True):
                stop.wait(10)
        except OSError:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(10)
        server.close()


async def test_a_slow_handshake_and_a_silent_http_peer_share_one_timeout(
    slow_tls_listener: int,
) -> None:
    opts = ProbeOptions("a", ADDR, timeout_s=2.0, retries=2)
    t0 = time.monotonic()
    res = await connect.probe(check(slow_tls_listener, "https"), opts)
    took = time.monotonic() - t0
    assert res.state == "open"
    sc = res.service_check
    assert sc is not None and sc.outcome == "error", sc
    assert sc.detail.endswith("waiting for an answer to HEAD /"), sc.detail
    # The handshake was done: what the certificate says is still reported.
    assert sc.tls_subject == "CN=vcenter.example,O=Example"
    assert sc.tls_not_after is not None and sc.tls_not_after > time.time()
    assert 1.2 < took < opts.timeout_s + SLACK_S, took
