"""Receiver-side evidence and the hop of a drop, through a real routed path (issue 13).

client -- r1 (NAT for two ports) -- r2 (drops one port) -- server (its own input chain drops
two ports), in namespaces of 198.18.0.0/15 this module creates and always deletes; the
routers keep the kernel's ICMP rate limiting on. The server runs a real ``serve`` agent (its
controller: a real ``netcheck-controller serve`` in the server's namespace, on loopback)
whose SYN watcher and listeners report who reached it, read back from the controller's
store; the client runs ``run`` in SYN and connect mode. Run under
``flock /tmp/netcheck-netns.lock``.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import (
    CLIENT,
    PYTHON,
    R1_RIGHT,
    R2_LEFT,
    SERVER,
    Lab,
    root_lab_skip_reason,
)
from test_agent_link import MATRIX

from deploy.lab.argv import Insecure, agent_argv, controller_argv
from deploy.lab.layout import LabHost
from netcheck.agent.wire import PeerSeen, Plan, ResultBatch, decode
from netcheck.controller.store import Store

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(root_lab_skip_reason() is not None, reason=str(root_lab_skip_reason())),
]

OPEN, HOST_DROP, ROUTER_DROP, NAT_OPEN, NAT_HOST_DROP = range(1101, 1106)
PLAIN = (OPEN, HOST_DROP, ROUTER_DROP)
NATTED = (NAT_OPEN, NAT_HOST_DROP)
CONTROLLER_PORT = 18111
SERVER_RULES = f"""table inet nct_host {{
  chain input {{
    type filter hook input priority 0;
    tcp dport {{ {HOST_DROP}, {NAT_HOST_DROP} }} drop
  }}
}}
"""
R2_RULES = f"""table inet nct_router {{
  chain forward {{
    type filter hook forward priority 0;
    tcp dport {ROUTER_DROP} drop
  }}
}}
"""
R1_NAT = f"""table ip nct_nat {{
  chain post {{
    type nat hook postrouting priority 100;
    oifname "v1" tcp dport {{ {NAT_OPEN}, {NAT_HOST_DROP} }} masquerade
  }}
}}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(icmp_ratelimit=True) as lab:
        lab.nft("s", SERVER_RULES)
        lab.nft("r2", R2_RULES)
        lab.nft("r1", R1_NAT)
        yield lab


def write_site(tmp: Path) -> tuple[Path, Path]:
    """A site of two agents, c probing s on the plain and the NAT'd ports (interaction 9):
    the server's plan holds exactly those ports."""
    ports = f"{OPEN}-{NAT_HOST_DROP}"  # the five test ports follow each other
    (tmp / "matrix.yaml").write_text(MATRIX)
    (tmp / "topology.yaml").write_text(
        f"""version: 1
matrix: matrix.yaml
policy:
  probe_period_seconds: 300
roles:
  c: {{name: Client, site: on_prem, agent: true}}
  s: {{name: Server, site: cloud, agent: true}}
interactions:
  - id: 9
    title: client to server
    source: c
    destination: s
    flows:
      - {{ports: "{ports}", service: tcp}}
modes:
  deploy:
    title: Deploy
    interactions: [9]
"""
    )
    (tmp / "inventory.yaml").write_text(
        f"""version: 1
site: watch
hosts:
  c:
    - {{name: c, address: {CLIENT}}}
  s:
    - {{name: s, address: {SERVER}}}
"""
    )
    return tmp / "topology.yaml", tmp / "inventory.yaml"


def client_plan(ports: tuple[int, ...], timeout_s: float = 1.0) -> dict[str, Any]:
    checks = [
        {
            "check_id": f"9:c>s:{port}",
            "interaction": 9,
            "dst_role": "s",
            "dst_host": "s",
            "dst_address": SERVER,
            "port": port,
            "service": "tcp",
        }
        for port in ports
    ]
    plan = {"role": "c", "host": "c", "address": CLIENT, "listen": [], "checks": checks}
    return {**plan, "timeout_s": timeout_s}


def run_client(lab: Lab, tmp: Path, mode: str, plan: dict[str, Any]) -> ResultBatch:
    decode(Plan, plan)
    plan_file, out = tmp / f"plan-{mode}.json", tmp / f"out-{mode}.json"
    plan_file.write_text(json.dumps(plan))
    argv = [PYTHON, "-m", "netcheck.agent", "run", "--plan", str(plan_file), "--out", str(out)]
    proc = lab.run("c", [*argv, "--mode", mode, "--no-listen"])
    assert proc.returncode == 0, proc.stderr
    return decode(ResultBatch, json.loads(out.read_text()))


def stored_peers(db: Path) -> tuple[PeerSeen, ...] | None:
    """The server's peers as the controller stored them (None before its first batch)."""
    if not db.exists():
        return None
    try:
        store = Store.open(db)
    except Exception:  # the controller is still creating it
        return None
    try:
        snap = store.snapshot()
    finally:
        store.close()
    if "s" not in snap.listeners:
        return None
    return snap.peers.get("s", ())


def serve_and_collect(lab: Lab, tmp: Path, mode: str) -> tuple[tuple[PeerSeen, ...], str]:
    """Start the controller and the server's agent, probe it from the client (the plain
    ports, then the NAT'd ones), stop the agent: the peers the controller stored, and the
    agent's log."""
    topology, inventory = write_site(tmp)
    token, db, log = tmp / "token", tmp / "controller.sqlite", tmp / "s.log"
    token.write_text("watch-test-token\n")
    token.chmod(0o600)
    trust = Insecure(token)
    listen = f"127.0.0.1:{CONTROLLER_PORT}"
    controller = lab.spawn(
        "s", controller_argv(topology, inventory, listen, db, trust), stderr=tmp / "ctl.log"
    )
    server = LabHost("s", "cloud", "s", 1, SERVER, SERVER, agent=True)
    argv = agent_argv(server, f"http://{listen}", trust, once=True, linger_s=60)
    agent = lab.spawn("s", argv, stderr=log)
    for _ in range(150):  # the listeners are reported at once (a round of no checks)
        if stored_peers(db) is not None:
            break
        time.sleep(0.1)
    assert stored_peers(db) is not None, log.read_text() + (tmp / "ctl.log").read_text()
    run_client(lab, tmp, mode, client_plan(PLAIN))
    run_client(lab, tmp, mode, client_plan(NATTED))
    agent.send_signal(signal.SIGTERM)
    agent.wait(timeout=20)
    peers = stored_peers(db) or ()
    controller.send_signal(signal.SIGTERM)
    controller.wait(timeout=20)
    return peers, log.read_text()


@pytest.mark.parametrize("mode", ["syn", "connect"])
def test_the_destination_agent_sees_who_reached_it(lab: Lab, tmp_path: Path, mode: str) -> None:
    seen, log = serve_and_collect(lab, tmp_path, mode)
    peers = {(p.port, p.src_address, p.how): p for p in seen}
    syn = {(port, src) for port, src, how in peers if how == "syn"}
    accepted = {(port, src) for port, src, how in peers if how == "accepted"}
    # The host's own input chain dropped these: the SYN reached the interface all the same.
    assert (HOST_DROP, CLIENT) in syn, log
    # r2 dropped this one: it never reached the host.
    assert all(port != ROUTER_DROP for port, _ in syn | accepted)
    assert (OPEN, CLIENT) in syn
    # NAT: the SYN and the connection arrive from r1's address, never from the client's.
    assert (NAT_HOST_DROP, R1_RIGHT) in syn
    assert (NAT_OPEN, R1_RIGHT) in syn
    assert (NAT_OPEN, R1_RIGHT) in accepted  # SYN mode: the one real connection of the pair
    assert (OPEN, CLIENT) in accepted
    assert not {(p, s) for p, s in syn | accepted if p in NATTED and s == CLIENT}
    assert all(p.ttl is not None and 1 <= p.ttl < 64 for p in peers.values() if p.how == "syn")
    assert all(p.ttl is None for p in peers.values() if p.how == "accepted")
    assert (HOST_DROP, CLIENT) not in accepted


# Sends `n` UDP datagrams with TTL 2 to the server: r2 answers time-exceeded until its ICMP
# rate limit toward the client is spent. Prints how many it answered (read with IP_RECVERR).
EXHAUST = """
import socket, sys, time
n, dst = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_IP, 11, 1)  # IP_RECVERR
s.setsockopt(socket.SOL_IP, socket.IP_TTL, 2)
for i in range(n):
    try:
        s.sendto(b"x", (dst, 33434 + i))
    except OSError:  # the error of an earlier datagram, reported once (it stays queued)
        pass
time.sleep(0.2)
answered = 0
while True:
    try:
        s.recvmsg(64, 512, 0x2000 | socket.MSG_DONTWAIT)  # MSG_ERRQUEUE
    except OSError:
        break
    answered += 1
print(answered)
"""


@pytest.mark.parametrize("mode", ["syn", "connect"])
def test_a_router_drop_names_the_router_under_icmp_rate_limiting(
    lab: Lab, tmp_path: Path, mode: str
) -> None:
    """r2 drops the port; its ICMP rate limit toward the client is spent just before the
    probe, so r2's time-exceeded for the trace's TTL 2 comes only when a token is back (about
    a second later): the paced trace retries the silent hop and still names r2, hop 2."""
    spent = lab.run("c", [PYTHON, "-c", EXHAUST, "30", SERVER])
    assert spent.returncode == 0, spent.stderr
    assert 1 <= int(spent.stdout) < 30  # rate limiting is on: r2 answered only a burst
    res = run_client(lab, tmp_path, mode, client_plan((ROUTER_DROP, HOST_DROP), 3.0))
    by_port = {r.port: r for r in res.results}
    drop = by_port[ROUTER_DROP]
    assert drop.state == "filtered"
    assert (drop.last_hop, drop.last_hop_hops) == (R2_LEFT, 2), drop
    # The host's own firewall drops this one: the last router is r2 as well (the SYN was seen
    # at the server's interface: see the test above).
    assert by_port[HOST_DROP].state == "filtered"
    assert by_port[HOST_DROP].last_hop == R2_LEFT


WATCH_FOR = """
import asyncio, sys
from netcheck.agent.watch import SynWatcher
async def main():
    seen = []
    w = SynWatcher(lambda *syn: seen.append(syn))
    w.watch([int(sys.argv[1])])
    print("ready", w.active, flush=True)
    loop = asyncio.get_running_loop()
    for _ in range(2):  # a line in: what was seen since the last one out
        await loop.run_in_executor(None, sys.stdin.readline)
        await asyncio.sleep(0.2)
        print(sorted(set(seen)), flush=True)
        seen.clear()
    w.close()
asyncio.run(main())
"""


def test_a_router_does_not_record_the_syns_it_forwards(lab: Lab, tmp_path: Path) -> None:
    """A watcher on r2 records nothing of the SYNs it passes on to the server (they arrive as
    PACKET_HOST too: only the destination address tells), and sees one to its own address."""
    import subprocess

    ns = lab.ns["r2"]
    argv = ["ip", "netns", "exec", ns, PYTHON, "-c", WATCH_FOR, str(OPEN)]
    with subprocess.Popen(
        argv, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as watcher:
        try:
            assert watcher.stdin is not None and watcher.stdout is not None
            assert watcher.stdout.readline().split() == ["ready", "True"]
            seen = []
            plan = client_plan((OPEN,))
            to_r2 = {**plan["checks"][0], "check_id": "9:c>r2:1101", "dst_address": R2_LEFT}
            for checks in ([plan["checks"][0]], [to_r2]):
                run_client(lab, tmp_path, "connect", {**plan, "checks": checks})
                watcher.stdin.write("\n")
                watcher.stdin.flush()
                seen.append(watcher.stdout.readline().strip())
            watcher.wait(timeout=10)
        finally:
            if watcher.poll() is None:
                watcher.kill()
    assert seen == ["[]", str([(OPEN, CLIENT, 63)])]
