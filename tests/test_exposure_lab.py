"""The exposure audit end to end in the lab (root): the whole lab up (namespaces, routers,
controller, agents with mutual TLS, stand-ins), an operator's ``netcheck-controller request
exposure`` written into the controller's database, the chosen agent sweeps all 65,535 ports
of every host its plan probes, and the report lists exactly the listener opened on an
undocumented port (with its banner), nothing else.

"Nothing else" needs a site that follows the spec for this source: each destination's own
firewall (an nftables table in its namespace) drops new connections from the source to any
port its plan does not list, except the one undocumented port opened for the test; the
stand-ins hold every port of their role, and those listed for other sources are closed to
this one like a real site's firewall would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.lab import lab as labmod

REPO = Path(__file__).resolve().parents[1]
STATE = Path("/tmp/netcheck-lab-exposure")
PREFIX = "nchx-"
UNDOCUMENTED = 4444
BANNER = "SSH-2.0-undocumented-lab"
TABLE = "nchx_exposure"

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("nft") is None, reason="needs ip and nft"
    ),
]

LISTEN = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {UNDOCUMENTED})); s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"{BANNER}\\r\\n"); c.close()
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[labmod.Lab]:
    from netcheck.controller.spec import load_spec

    running: labmod.Lab | None = None
    try:
        running = labmod.up("clean", "netns", state=STATE, prefix=PREFIX, probe_mode="auto")
        spec = load_spec(REPO / "topology.yaml")
        assert running.wait_listening(spec, 20.0) == []
        assert running.wait_round(time.time(), 6.0, 3 * labmod.LAB_PERIOD_S + 20) == []
        yield running
    finally:
        labmod.down(STATE, PREFIX)


def _plan_targets(lab: labmod.Lab) -> tuple[str, str, dict[str, tuple[str, set[int]]]]:
    """The agent host with the fewest destinations, its address, and per destination host:
    (address, the ports its plan lists)."""
    from netcheck.controller.expand import by_source, expected
    from netcheck.controller.inventory import load_inventory
    from netcheck.controller.spec import load_spec

    spec = load_spec(lab.topology)
    inv = load_inventory(lab.inventory, spec)
    index = by_source(expected(spec, inv).checks)
    best: tuple[int, str, str, dict[str, tuple[str, set[int]]]] | None = None
    for (_role, host), checks in index.items():
        dsts: dict[str, tuple[str, set[int]]] = {}
        for c in checks:
            dsts.setdefault(c.spec.dst_host, (c.spec.dst_address, set()))[1].add(c.spec.port)
        if dsts and (best is None or len(dsts) < best[0]):
            best = (len(dsts), host, checks[0].src_address, dsts)
    assert best is not None
    return best[1], best[2], best[3]


def _host(lab: labmod.Lab, name: str) -> Any:
    return next(h for h in lab.layout.hosts if h.name == name)


def _nft(netns: str, rules: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"],
        input=rules, text=True, check=True, capture_output=True, timeout=20,
    )  # fmt: skip


def test_exposure_sweep_finds_the_undocumented_listener_and_nothing_else(
    lab: labmod.Lab,
) -> None:
    src, src_address, dsts = _plan_targets(lab)
    first = sorted(dsts)[0]
    assert all(UNDOCUMENTED not in ports for _, ports in dsts.values())
    for name, (_addr, ports) in dsts.items():
        allowed = ", ".join(map(str, sorted(ports | {UNDOCUMENTED})))
        _nft(
            _host(lab, name).netns,
            f"table inet {TABLE} {{\n chain input {{\n"
            "  type filter hook input priority -10; policy accept;\n"
            f"  ip saddr {src_address} ct state new tcp dport != {{ {allowed} }} drop\n"
            " }\n}\n",
        )
    listener = subprocess.Popen(
        ["ip", "netns", "exec", _host(lab, first).netns, sys.executable, "-c", LISTEN],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        made = subprocess.run(
            [
                sys.executable, "-m", "netcheck.controller", "request", "exposure",
                "--db", str(lab.db), "--topology", str(lab.topology),
                "--inventory", str(lab.inventory), "--host", src,
                "--timeout", "0.5", "--deadline", "120",
            ],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        (line,) = made.stdout.splitlines()
        rid = line.split()[0]
        assert line.split()[1:] == ["exposure", line.split()[2], src]
        state: dict[str, Any] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status, body = lab.get(f"/api/v1/requests?id={rid}", 10.0)
            assert status == 200, body[:300]
            state = json.loads(body)
            if state["state"] in ("done", "failed", "expired"):
                break
            time.sleep(1.0)
        assert state.get("state") == "done", state
        swept = {h["dst_host"]: h for h in state["report"]["swept"]}
        assert set(swept) == set(dsts)
        assert all(h["ports"] == 65535 and h["complete"] for h in swept.values())
        # the report follows the request book within a second or two
        report: dict[str, Any] = {}
        for _ in range(20):
            status, body = lab.get("/api/v1/report?format=json", 20.0)
            report = json.loads(body)
            if report["exposure"]["sweeps"]:
                break
            time.sleep(0.5)
        exposure = report["exposure"]
        got = [(f["src_host"], f["dst_host"], f["port"], f["banner"]) for f in exposure["findings"]]
        assert got == [(src, first, UNDOCUMENTED, BANNER)]
        (close,) = exposure["close"]
        assert close["ports"] == str(UNDOCUMENTED) and close["dst_host"] == first
        status, body = lab.get("/metrics", 10.0)
        metrics = body.decode()
        assert f'netcheck_exposure_open_ports{{dst_host="{first}",src_host="{src}"}} 1.0' in metrics
    finally:
        listener.kill()
        listener.wait(5)
        if listener.stdout is not None:
            listener.stdout.close()
        for name in dsts:
            subprocess.run(
                ["ip", "netns", "exec", _host(lab, name).netns, "nft", "delete", "table", "inet",
                 TABLE],
                capture_output=True, timeout=20,
            )  # fmt: skip
