"""The request channel end to end without root: a real controller (aiohttp server, SQLite
file) and a real serving agent (agent.daemon.serve, connect mode) on loopback, a site whose
addresses are all 127.x. The operator's request reaches the agent, which sweeps a port range
of every destination of its plan and reports; the report lists the one listener opened on an
undocumented port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from netcheck.agent.daemon import DaemonConfig, serve
from netcheck.controller.app import make_app
from netcheck.controller.inventory import load_inventory
from netcheck.controller.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789"
READ = "read-token-9876543210"
OPERATOR = {"Authorization": f"Bearer {READ}"}
DST, DST_ADDRESS = "prem-mgr", "127.0.1.30"  # 198.18.1.30 in the example, moved to loopback


def _loopback_inventory(tmp: Path) -> Path:
    text = (REPO / "inventory.example.yaml").read_text().replace("198.18.", "127.0.")
    path = tmp / "site.yaml"
    path.write_text(text)
    return path


def _quiet_window(address: str, width: int = 20) -> tuple[int, int, socket.socket]:
    """A listener on `address` whose port has nothing else listening within `width` of it
    (on any address: a wildcard listener of another process would answer too)."""
    for _ in range(50):
        s = socket.socket()
        s.bind((address, 0))
        port = int(s.getsockname()[1])
        lo, hi = max(1, port - width), min(65535, port + width)
        busy = False
        for p in range(lo, hi + 1):
            if p == port:
                continue
            with socket.socket() as probe:
                probe.settimeout(0.2)
                if probe.connect_ex((address, p)) == 0:
                    busy = True
                    break
        if not busy:
            s.listen(16)
            s.setblocking(False)
            return lo, hi, s
        s.close()
    raise AssertionError("no quiet port window on loopback")


async def test_an_exposure_request_runs_on_a_serving_agent(tmp_path: Path) -> None:
    spec = load_spec(REPO / "topology.yaml")
    inv = load_inventory(_loopback_inventory(tmp_path), spec)
    host = inv.of_role("pio")[0]
    app = make_app(spec, inv, tmp_path / "nc.sqlite", TOKEN, read_token=READ, open_reads=False)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    lo, hi, listener = _quiet_window(DST_ADDRESS)
    port = int(listener.getsockname()[1])
    loop = asyncio.get_running_loop()

    async def say_hello() -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            with conn:
                await loop.sock_sendall(conn, b"220 undocumented ftp\r\n")

    talker = asyncio.create_task(say_hello())
    cfg = DaemonConfig(
        controller=str(client.make_url("")).rstrip("/"),
        token=TOKEN,
        role="pio",
        host=host.name,
        address=host.address,
        bind=host.address,
        mode_request="connect",
        first_run_cap_s=0.0,
        request_poll_s=0.2,
        stop_flush_s=1.0,
    )
    agent = asyncio.create_task(serve(cfg))
    try:
        body = {
            "kind": "exposure",
            "host": host.name,
            "params": {"first_port": lo, "last_port": hi, "timeout": 0.3, "rate": 5000},
            "deadline_s": 60,
        }
        resp = await client.post("/api/v1/requests", json=body, headers=OPERATOR)
        assert resp.status == 201, await resp.text()
        rid = (await resp.json())["requests"][0]["id"]
        state: dict[str, Any] = {}
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and state.get("state") not in ("done", "failed"):
            await asyncio.sleep(0.2)
            got = await client.get(f"/api/v1/requests?id={rid}", headers=OPERATOR)
            state = await got.json()
        assert state["state"] == "done", state
        report = state["report"]
        assert {h["dst_host"] for h in report["swept"]} >= {DST}
        assert all(h["mode"] == "connect" and h["ports"] == hi - lo + 1 for h in report["swept"])
        for _ in range(30):  # the report follows the request book within its refresh
            doc = await (await client.get("/api/v1/report", headers=OPERATOR)).json()
            if doc["exposure"]["sweeps"]:
                break
            await asyncio.sleep(0.2)
        found = [(f["dst_host"], f["port"], f["banner"]) for f in doc["exposure"]["findings"]]
        assert found == [(DST, port, "220 undocumented ftp")]
    finally:
        agent.cancel()
        talker.cancel()
        for task in (agent, talker):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        listener.close()
        await client.close()
