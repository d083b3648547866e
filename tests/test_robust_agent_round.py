"""A probe round that raises is logged and the next round runs (issue 12), in a real agent
process against the real controller on loopback.

The agent process starts through a small launcher that wraps the connect runner of the
registry (:data:`netcheck.agent.probes.RUNNERS`) so that its first round raises, as a bug in
a runner or the host's trouble would; every later round is the real runner. The test reads
the agent's own health endpoint and what the controller stored."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from port_helpers import free_port
from test_agent_link import AGENT_ADDR, REPO, TOKEN, agent_site

# Run as `python -c LAUNCHER ARGS...`: argv are the agent's own arguments.
LAUNCHER = """
import sys
from netcheck.agent import probes
from netcheck.agent.cli import main

real = probes.RUNNERS["connect"]
calls = [0]

async def first_round_raises(checks, opts, concurrency):
    calls[0] += 1
    if calls[0] == 1:
        raise RuntimeError("injected: the first probe round fails")
    return await real(checks, opts, concurrency)

probes.RUNNERS["connect"] = first_round_raises
raise SystemExit(main(sys.argv[1:]))
"""


async def _metrics(port: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
    text = (await asyncio.wait_for(reader.read(), 5)).decode()
    writer.close()
    values = {}
    for line in text.split("\r\n\r\n", 1)[-1].splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def test_a_failing_round_is_logged_and_the_next_round_runs(tmp_path: Path) -> None:
    ctl, ports = agent_site(tmp_path, period_s=0.5)
    health = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    await ctl.start()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", LAUNCHER, "serve", "--controller", ctl.url),
        *("--token-file", str(token_file), "--role", "pio", "--host", "pio-1"),
        *("--address", AGENT_ADDR, "--mode", "connect", "--splay", "0"),
        *("--health-listen", f"127.0.0.1:{health}"),
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: dict[str, float] = {}
    try:
        for _ in range(300):  # 30 s at most
            if ctl.results_received():
                break
            await asyncio.sleep(0.1)
        seen = await _metrics(health)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
        await ctl.stop()
    log = err.decode()
    assert proc.returncode == 0, log[-2000:]
    # The failure is in the log with its traceback, and counted on the health endpoint.
    assert "probe round 1 failed" in log
    assert "RuntimeError: injected: the first probe round fails" in log
    assert seen["netcheck_agent_probe_round_failures_total"] == 1
    assert seen["netcheck_agent_probe_rounds_total"] >= 1
    # The agent stayed up, and the rounds after the failed one probed and reported.
    states = {r.port: r.state for r in ctl.results_received()}
    assert states == {ports[0]: "open", ports[1]: "open", ports[2]: "refused"}
    stored, _ = ctl.stored()
    assert {r.port for r in stored} == set(ports)
