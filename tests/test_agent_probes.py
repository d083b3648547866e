"""Listeners and connect probes against real sockets on 127.0.0.x (no root needed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from agent_helpers import full_backlog_listener
from port_helpers import free_port

from netcheck.agent.certs import StandinCert
from netcheck.agent.listeners import ListenerSet
from netcheck.agent.probes import Outcome, ProbeOptions, connect, make_result
from netcheck.agent.probes.traceroute import Trace
from netcheck.agent.runner import run_plan, schedule
from netcheck.agent.wire import CheckSpec, ListenSpec, Plan, ProbeResult, Service, ServiceCheck

ADDR = "127.0.0.7"


def check(port: int, service: Service = "tcp", addr: str = ADDR) -> CheckSpec:
    return CheckSpec(
        check_id=f"1:a>b:{port}",
        interaction=1,
        dst_role="b",
        dst_host="b",
        dst_address=addr,
        port=port,
        service=service,
    )


OPTS = ProbeOptions(src_host="a", src_address="127.0.0.1", timeout_s=1.0, retries=2)


@pytest.fixture
async def standins() -> AsyncIterator[tuple[ListenerSet, dict[Service, int]]]:
    cert = StandinCert("test")
    listeners = ListenerSet(ADDR, cert.server_context(), idle_timeout=1.0)
    services: list[Service] = ["tcp", "ssh", "tls", "authd", "iscsi", "docker", "vsphere"]
    ports = {svc: free_port(ADDR) for svc in services}
    statuses = await listeners.reconcile(ListenSpec(port=p, service=s) for s, p in ports.items())
    assert [s.state for s in statuses] == ["listening"] * len(services)
    try:
        yield listeners, ports
    finally:
        await listeners.close()
        cert.cleanup()


async def test_open_ports_pass_their_protocol_checks(
    standins: tuple[ListenerSet, dict[Service, int]],
) -> None:
    listeners, ports = standins
    results = {svc: await connect.probe(check(port, svc), OPTS) for svc, port in ports.items()}
    for svc, res in results.items():
        assert res.state == "open", (svc, res)
        assert res.attempts == 1
        assert res.latency_s is not None and res.latency_s < 0.5
        assert res.mode == "connect"
    assert results["tcp"].service_check is None
    for svc in ("ssh", "tls", "authd", "iscsi", "docker", "vsphere"):
        sc = results[svc].service_check
        assert sc is not None and sc.outcome == "ok", (svc, sc)
    ssh = results["ssh"].service_check
    assert ssh is not None and ssh.detail.startswith("SSH-2.0-netcheck_")
    tls = results["tls"].service_check
    assert (
        tls is not None and tls.tls_subject is not None and "netcheck stand-in" in tls.tls_subject
    )
    assert tls.tls_not_after is not None and tls.tls_not_after > time.time()
    authd = results["authd"].service_check
    assert authd is not None and authd.detail.startswith("220 VMware Authentication Daemon")
    # The receiving side saw every connection, from the probing address.
    await asyncio.sleep(0.05)
    seen = listeners.take_peers()
    assert {p.port for p in seen} == set(ports.values())
    assert all(p.src_address == "127.0.0.1" for p in seen)


async def test_many_peers_at_once_all_complete_the_tls_handshake() -> None:
    # Several sources probing one agent's TLS ports at the same moment: every handshake
    # completes at once (a ClientHello read before start_tls used to hang until the timeout).
    cert = StandinCert("test")
    listeners = ListenerSet(ADDR, cert.server_context(), idle_timeout=1.0)
    ports = [free_port(ADDR) for _ in range(12)]
    try:
        await listeners.reconcile(ListenSpec(port=p, service="https") for p in ports)
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(connect.probe(check(ports[i % 12], "https"), OPTS) for i in range(60))
        )
        took = time.monotonic() - t0
    finally:
        await listeners.close()
        cert.cleanup()
    outcomes = [r.service_check.outcome if r.service_check else None for r in results]
    assert outcomes == ["ok"] * 60
    assert took < 0.9, took


async def test_wrong_service_is_a_mismatch(
    standins: tuple[ListenerSet, dict[Service, int]],
) -> None:
    _, ports = standins
    ssh_on_authd = await connect.probe(check(ports["authd"], "ssh"), OPTS)
    assert ssh_on_authd.state == "open"
    assert ssh_on_authd.service_check is not None
    assert ssh_on_authd.service_check.outcome == "mismatch"
    tls_on_ssh = await connect.probe(check(ports["ssh"], "tls"), OPTS)
    assert tls_on_ssh.service_check is not None
    assert tls_on_ssh.service_check.outcome == "mismatch"
    authd_on_tcp = await connect.probe(check(ports["tcp"], "authd"), OPTS)
    assert authd_on_tcp.service_check is not None
    assert authd_on_tcp.service_check.outcome in ("mismatch", "error")


async def test_nothing_listening_is_refused() -> None:
    res = await connect.probe(check(free_port(ADDR)), OPTS)
    assert res.state == "refused"
    assert res.attempts == 1
    assert "reset" in res.error


async def test_full_backlog_is_filtered_after_all_attempts() -> None:
    # A listener that never accepts, with its backlog full, drops further SYNs: a real
    # silent path without any firewall.
    server = socket.socket()
    server.bind((ADDR, 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex((ADDR, port))
            fillers.append(c)
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        res = await connect.probe(check(port), ProbeOptions("a", ADDR, timeout_s=0.9, retries=2))
        elapsed = time.monotonic() - t0
    finally:
        for c in fillers:
            c.close()
        server.close()
    assert res.state == "filtered"
    assert res.attempts == 3
    assert 0.85 < elapsed < 1.5


async def test_occupied_port_names_its_owner() -> None:
    holder = socket.socket()
    holder.bind((ADDR, 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    listeners = ListenerSet(ADDR, None)
    try:
        free = free_port(ADDR)
        statuses = await listeners.reconcile(
            [ListenSpec(port=port, service="tcp"), ListenSpec(port=free, service="tcp")]
        )
    finally:
        await listeners.close()
        holder.close()
    by_port = {s.port: s for s in statuses}
    assert by_port[port].state == "occupied"
    assert f"[{os.getpid()}]" in by_port[port].owner
    assert by_port[free].state == "listening"


async def test_a_port_dropped_from_the_plan_is_reported_closed() -> None:
    kept, dropped = free_port(ADDR), free_port(ADDR)
    listeners = ListenerSet(ADDR, None)
    try:
        await listeners.reconcile(
            [ListenSpec(port=kept, service="tcp"), ListenSpec(port=dropped, service="tcp")]
        )
        before = time.time()
        statuses = {s.port: s for s in await listeners.reconcile([ListenSpec(kept, "tcp")])}
        assert statuses[kept].state == "listening" and statuses[kept].since < before
        assert statuses[dropped].state == "closed" and statuses[dropped].since >= before
        with socket.socket() as s:  # really released
            s.bind((ADDR, dropped))
        # Held again: "listening" replaces "closed".
        statuses = {s.port: s for s in await listeners.reconcile([ListenSpec(dropped, "tcp")])}
        assert statuses[dropped].state == "listening"
        assert statuses[kept].state == "closed"
    finally:
        await listeners.close()
    assert {s.state for s in listeners.statuses()} == {"closed"}


async def test_concurrent_plan_takes_about_one_timeout() -> None:
    ports = [free_port(ADDR) for _ in range(40)]
    t0 = time.monotonic()
    results = await connect.run([check(p) for p in ports], OPTS, concurrency=512)
    assert time.monotonic() - t0 < 1.0
    assert [r.state for r in results] == ["refused"] * 40
    assert [r.port for r in results] == ports


async def test_run_plan_takes_the_runner_of_its_mode_from_the_registry() -> None:
    ports = [free_port(ADDR) for _ in range(5)]
    plan = Plan(
        role="a",
        host="a",
        address="127.0.0.1",
        listen=(),
        checks=tuple(check(p) for p in ports),
        timeout_s=1.0,
    )
    results = await run_plan(plan, "connect")
    assert [(r.port, r.state, r.mode) for r in results] == [
        (p, "refused", "connect") for p in ports
    ]
    assert {(r.src_host, r.src_address) for r in results} == {("a", "127.0.0.1")}


def test_a_result_is_the_check_the_options_and_the_outcome() -> None:
    sc = ServiceCheck(service="ssh", outcome="ok", detail="SSH-2.0-x")
    found = Outcome("open", attempts=2, latency_s=0.01, service_check=sc, error="")
    c = check(22, "ssh")
    assert make_result(c, OPTS, "syn", 1700000000.0, found) == ProbeResult(
        check_id=c.check_id,
        interaction=1,
        src_host="a",
        src_address="127.0.0.1",
        dst_host="b",
        dst_address=ADDR,
        port=22,
        state="open",
        mode="syn",
        attempts=2,
        started_at=1700000000.0,
        latency_s=0.01,
        service_check=sc,
    )


def test_schedule_jitters_within_ten_percent() -> None:
    import random

    delays = schedule(300.0, random.Random(1), first_cap_s=30.0)
    first = next(delays)
    assert 0.0 <= first <= 30.0
    rest = [next(delays) for _ in range(200)]
    assert all(270.0 <= d <= 330.0 for d in rest)
    assert len({round(d, 3) for d in rest}) > 150


@contextlib.contextmanager
def silent_port(addr: str = ADDR) -> Iterator[int]:
    """A listener that never accepts, its backlog full: further SYNs are dropped."""
    with full_backlog_listener(addr) as (_, port):
        yield port


async def test_trace_slots_queue_a_destinations_checks_past_its_bound() -> None:
    """One slot per destination: a second check to it waits for the first's trace to end
    (and names no hop when its own deadline comes first); another address is traced at once."""
    slots = connect.TraceSlots(total=8, per_destination=1)
    other = "127.0.0.8"
    with silent_port() as port:
        now = asyncio.get_running_loop().time()
        first, starved, queued, elsewhere = Trace(), Trace(), Trace(), Trace()
        await asyncio.gather(
            slots.trace(check(port), OPTS, now + 0.4, first),
            slots.trace(check(port), OPTS, now + 0.3, starved),
            slots.trace(check(port), OPTS, now + 0.9, queued),
            slots.trace(check(free_port(other), addr=other), OPTS, now + 0.4, elsewhere),
        )
    assert first.tries and min(first.last_sent.values()) < now + 0.05
    assert not starved.tries, starved
    # The queued check got the slot when the first's trace ended at its deadline.
    assert queued.tries and min(queued.last_sent.values()) >= now + 0.35
    # A reset at TTL 1: the other address's trace was not held up by the first.
    assert elsewhere.answered_at_ttl == 1 and min(elsewhere.last_sent.values()) < now + 0.05


async def test_trace_slots_bound_the_round_in_all() -> None:
    slots = connect.TraceSlots(total=1)
    with silent_port() as port, silent_port("127.0.0.8") as port2:
        now = asyncio.get_running_loop().time()
        first, second = Trace(), Trace()
        await asyncio.gather(
            slots.trace(check(port), OPTS, now + 0.3, first),
            slots.trace(check(port2, addr="127.0.0.8"), OPTS, now + 0.2, second),
        )
    assert first.tries and not second.tries
