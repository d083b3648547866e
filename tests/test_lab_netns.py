"""The lab's namespaces, routers and nftables rules, with real sockets (root only)."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.lab import lab as labmod
from deploy.lab import netns, procs
from deploy.lab.enter import call_in
from deploy.lab.layout import Layout, build_layout, ctl_netns, router_netns
from netcheck.agent.probes import service
from netcheck.controller.spec import Spec, load_spec

REPO = Path(__file__).resolve().parents[1]
# Not the default "nclab-": a test run never tears down a demo running next to it.
PREFIX = "nclt-"
CTL = ctl_netns(PREFIX)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("nft") is None, reason="needs ip and nft"
    ),
]


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(REPO / "topology.yaml")


@pytest.fixture(scope="module")
def layout(spec: Spec) -> Layout:
    return build_layout({n: (r.site, r.agent) for n, r in spec.roles.items()}, PREFIX)


@pytest.fixture(scope="module")
def lab() -> Iterator[labmod.Lab]:
    """The lab's network with the audit scenario applied, nothing started (``start=False``)."""
    state = Path("/tmp/netcheck-lab-test-netns")
    with labmod.session("audit", PREFIX, state, kind="netns", start=False) as running:
        yield running


@pytest.fixture(scope="module")
def built(lab: labmod.Lab) -> Layout:
    return lab.layout


def _listen(ns: str, address: str, port: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        s.listen(8)
        return s

    return call_in(ns, make)


def _connect(ns: str, address: str, port: int, timeout: float = 1.0) -> int:
    """0 when the connect succeeds, else the errno (ETIMEDOUT on timeout)."""

    def attempt() -> int:
        with socket.socket() as s:
            s.settimeout(timeout)
            try:
                s.connect((address, port))
            except TimeoutError:
                return errno.ETIMEDOUT
            except OSError as exc:
                return exc.errno or -1
            return 0

    return call_in(ns, attempt)


def test_allowed_flows_connect_across_routers_and_interconnect(built: Layout) -> None:
    pio = built.of_role("pio")[0]
    vm = built.of_role("cloud_vm")[0]
    mgr = built.of_role("cloud_manager")[0]
    with _listen(vm.netns, vm.address, 9001), _listen(mgr.netns, mgr.address, 7003):
        assert _connect(built.of_role("cloud_cache")[0].netns, vm.address, 9001) == 0
        assert _connect(built.of_role("prem_manager")[0].netns, mgr.address, 7003) == 0
    # nothing listening: a reset from the destination itself
    assert _connect(pio.netns, vm.address, 9001) == errno.ECONNREFUSED


def test_drop_times_out_even_with_a_listener(built: Layout) -> None:
    mgr = built.of_role("cloud_manager")[0]
    with _listen(mgr.netns, mgr.address, 6004):
        t0 = time.monotonic()
        assert _connect(built.of_role("prem_manager")[0].netns, mgr.address, 6004) == (
            errno.ETIMEDOUT
        )
        assert time.monotonic() - t0 >= 0.9


def test_reset_refuses_while_the_destination_listens(built: Layout) -> None:
    mgr = built.of_role("cloud_manager")[0]
    cache = built.of_role("cloud_cache")[0]
    with _listen(mgr.netns, mgr.address, 32820):
        assert _connect(cache.netns, mgr.address, 32820) == errno.ECONNREFUSED
        # the other direction of the same port is not blocked
    with _listen(cache.netns, cache.address, 32820):
        assert _connect(mgr.netns, cache.address, 32820) == 0


def test_prohibit_answers_icmp_admin_prohibited(built: Layout) -> None:
    pio = built.of_role("pio")[0]
    vm1, vm2 = built.of_role("prem_vm")
    with _listen(vm2.netns, vm2.address, 443), _listen(vm1.netns, vm1.address, 443):
        assert _connect(pio.netns, vm2.address, 443) == errno.EHOSTUNREACH
        assert _connect(pio.netns, vm1.address, 443) == 0


def test_management_network_reaches_ctl_but_is_not_a_site_path(built: Layout) -> None:
    pio = built.of_role("pio")[0]
    with _listen(CTL, "198.19.0.1", 8999):
        assert _connect(pio.netns, "198.19.0.1", 8999) == 0
    assert CTL in netns.leftover_namespaces(PREFIX)
    # the ctl namespace has no route into the sites
    assert _connect(CTL, pio.address, 443, 0.5) == errno.ENETUNREACH


async def test_standin_answers_like_vcenter_and_esxi_through_the_router(
    lab: labmod.Lab, spec: Spec
) -> None:
    esxi = lab.layout.of_role("cloud_esxi")[0]  # its role listens on 443 (vsphere) and 902
    src = lab.layout.of_role("cloud_manager")[0]
    (proc,) = lab.start_standins(spec, [esxi])  # returns once every port is held
    try:
        assert lab.wait_listening(spec, 0.0, [esxi]) == []

        def connected(port: int) -> socket.socket:
            s = socket.create_connection((esxi.address, port), timeout=2)
            s.setblocking(False)
            return s

        soap = await service.check("vsphere", call_in(src.netns, lambda: connected(443)), "", 3)
        assert soap is not None and soap.outcome == "ok", soap
        assert "apiType HostAgent" in soap.detail
        authd = await service.check("authd", call_in(src.netns, lambda: connected(902)), "", 3)
        assert authd is not None and authd.outcome == "ok"
        assert authd.detail.startswith("220 VMware Authentication Daemon Version 1.10")
    finally:
        assert procs.alive_recorded(lab.state) == {esxi.name: proc.pid}
        procs.stop(proc)
    assert procs.recorded_pids(lab.state) == {}
    assert proc.returncode is not None


@pytest.fixture(scope="module")
def diag() -> Iterator[Layout]:
    """The diagnosis scenario's network beside the audit's (host firewalls, NAT, rate limits)."""
    state = Path("/tmp/netcheck-lab-test-netns-diag")
    with labmod.session("diagnosis", "ncld-", state, kind="netns", start=False) as running:
        yield running.layout


def _peer(ns: str, address: str, port: int, src_ns: str, timeout: float = 1.0) -> str | None:
    """Connect from ``src_ns`` to a listener in ``ns``: the source address it accepted."""
    with _listen(ns, address, port) as server:
        if _connect(src_ns, address, port, timeout) != 0:
            return None
        server.settimeout(1.0)
        conn, (peer, _) = server.accept()
        conn.close()
        return str(peer)


def test_host_firewall_drops_resets_and_prohibits_in_its_own_namespace(diag: Layout) -> None:
    esxim = diag.of_role("prem_esxi_manager")[0]
    pm = diag.of_role("prem_manager")[0]
    cm = diag.of_role("cloud_manager")[0]
    pio = diag.of_role("pio")[0]
    vm1 = diag.of_role("prem_vm")[0]
    assert netns.has_table(pm.netns, "nclab") and not netns.has_table(pio.netns, "nclab")
    with _listen(pm.netns, pm.address, 5003), _listen(pm.netns, pm.address, 5004):
        assert _connect(esxim.netns, pm.address, 5003) == errno.ETIMEDOUT
        assert _connect(esxim.netns, pm.address, 5004) == 0
    with _listen(cm.netns, cm.address, 7009):
        assert _connect(pm.netns, cm.address, 7009) == errno.ECONNREFUSED
    with _listen(vm1.netns, vm1.address, 443):
        assert _connect(pio.netns, vm1.address, 443) == errno.EHOSTUNREACH
    # the router's ICMP host-unreachable (the host does not filter 8004)
    with _listen(esxim.netns, esxim.address, 8004):
        assert _connect(pio.netns, esxim.address, 8004) == errno.EHOSTUNREACH


def test_nat_rewrites_the_source_the_destination_sees(diag: Layout) -> None:
    pm = diag.of_role("prem_manager")[0]
    cm = diag.of_role("cloud_manager")[0]
    pio = diag.of_role("pio")[0]
    assert _peer(cm.netns, cm.address, 7008, pm.netns) == "198.18.254.1"  # masquerade
    assert _peer(cm.netns, cm.address, 7007, pm.netns) == pm.address  # not translated
    assert _peer(pm.netns, pm.address, 8001, pio.netns) == "198.18.1.250"  # snat


def test_icmp_rate_limiting_follows_the_scenario(diag: Layout, built: Layout) -> None:
    for r in ("prem", "cloud"):
        assert netns.read_sysctl(router_netns(r, "ncld-"), "net.ipv4.icmp_ratelimit") == "1000"
        # the audit leaves it off, so every traceroute probe is answered
        assert netns.read_sysctl(router_netns(r, PREFIX), "net.ipv4.icmp_ratelimit") == "0"


def test_down_removes_every_namespace_and_process(layout: Layout, tmp_path: Path) -> None:
    state = tmp_path / "state"
    labmod.down(state, PREFIX)  # the last test of the module: the shared namespaces go first
    netns.create(layout)
    host = layout.hosts[0]
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    proc = procs.start("sleeper", sleep, host.netns, state)
    stray = procs.start("stray", sleep, host.netns, state)
    (state / "pids" / "stray.pid").unlink()  # a crash lost its pid file
    assert set(netns.pids_in(host.netns)) >= {proc.pid, stray.pid}
    gone = labmod.down(state, PREFIX)
    assert gone["namespaces"] == len(layout.hosts) + 3
    assert netns.leftover_namespaces(PREFIX) == ()
    assert proc.wait(5) is not None and stray.wait(5) is not None
    assert labmod.down(state, PREFIX) == {"processes": 0, "namespaces": 0}  # idempotent
