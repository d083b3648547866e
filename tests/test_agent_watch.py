"""The SYN watcher (agent.watch) on this host's loopback: it sees a SYN to a watched port
(root), and without CAP_NET_RAW it does nothing and says so once."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys

import pytest
from agent_helpers import REPO

from netcheck.agent.caps import can_use_raw_sockets
from netcheck.agent.probes import bpf
from netcheck.agent.watch import SynWatcher

NO_RAW = """
import asyncio, logging
from netcheck.agent.watch import SynWatcher
logging.basicConfig(level=logging.INFO)
async def main():
    w = SynWatcher(lambda *seen: print("seen", seen))
    w.watch([1234])
    w.watch([1235])
    w.watch([1234, 1236])
    print(w.active)
asyncio.run(main())
"""


def test_without_cap_net_raw_it_does_nothing_and_says_so_once() -> None:
    argv = [sys.executable, "-c", NO_RAW]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("needs setpriv to drop CAP_NET_RAW as root")
        argv = [setpriv, "--bounding-set", "-net_raw", "--inh-caps", "-net_raw", *argv]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False"]
    assert proc.stderr.count("no CAP_NET_RAW") == 1, proc.stderr


def test_a_filter_holds_many_ports_with_short_jumps() -> None:
    prog = bpf.syns_to_ports(range(1, bpf.MAX_SYN_PORTS + 1))
    assert len(prog) <= bpf.MAX_INSNS
    assert all(jt <= 255 and jf <= 255 for _, jt, jf, _ in prog)
    with pytest.raises(ValueError, match="more than one filter holds"):
        bpf.syns_to_ports(range(1, bpf.MAX_SYN_PORTS + 2))


@pytest.mark.root
@pytest.mark.skipif(not can_use_raw_sockets(), reason="needs CAP_NET_RAW")
async def test_it_sees_a_syn_to_a_watched_port_and_not_to_another() -> None:
    seen: list[tuple[int, str, int]] = []
    with socket.socket() as a, socket.socket() as b:  # two free ports, nothing listening
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        watched, other = a.getsockname()[1], b.getsockname()[1]
    watcher = SynWatcher(lambda *syn: seen.append(syn))
    watcher.watch([watched])
    assert watcher.active
    loop = asyncio.get_running_loop()
    try:
        for port in (other, watched):
            with socket.socket() as s:
                s.setblocking(False)
                with pytest.raises(ConnectionRefusedError):
                    await loop.sock_connect(s, ("127.0.0.1", port))
        for _ in range(50):
            if seen:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
    finally:
        watcher.close()
    assert seen == [(watched, "127.0.0.1", 64)]
    assert not watcher.active
