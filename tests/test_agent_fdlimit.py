"""A plan larger than the open-file budget: concurrency is capped, every state stays right.

The agent runs through its CLI in a subprocess whose RLIMIT_NOFILE (soft and hard) is
lowered to 200, far below the 4096 probes x 3 staggered sockets its plan asks for.
"""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netcheck.agent.fdlimit import fd_budget, fd_capped_concurrency, fd_reserve
from netcheck.agent.probes.connect import TRACE_SOCKETS
from netcheck.agent.wire import CheckSpec, Plan, ResultBatch, decode, encode

REPO = Path(__file__).resolve().parent.parent
ADDR = "127.0.0.13"
NOFILE = 200


def _lower_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.fixture
def ports() -> Iterator[dict[str, list[int]]]:
    """30 open ports, 2 silent ones (full backlog), 268 refused ones, all on ADDR."""
    socks: list[socket.socket] = []
    try:
        open_ports, silent = [], []
        for _ in range(30):
            s = socket.socket()
            s.bind((ADDR, 0))
            s.listen(16)
            socks.append(s)
            open_ports.append(int(s.getsockname()[1]))
        for _ in range(2):
            s = socket.socket()
            s.bind((ADDR, 0))
            s.listen(0)
            socks.append(s)
            silent.append(int(s.getsockname()[1]))
            for _ in range(4):
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex((ADDR, silent[-1]))
                socks.append(c)
        held = []
        for _ in range(268):
            s = socket.socket()
            s.bind((ADDR, 0))
            held.append(s)
        refused = [int(s.getsockname()[1]) for s in held]
        for s in held:
            s.close()
        time.sleep(0.2)
        yield {"open": open_ports, "filtered": silent, "refused": refused}
    finally:
        for s in socks:
            s.close()


def test_plan_beyond_the_fd_budget_keeps_every_state(
    ports: dict[str, list[int]], tmp_path: Path
) -> None:
    want = {p: state for state, ps in ports.items() for p in ps}
    plan = Plan(
        role="a",
        host="a",
        address=ADDR,
        listen=(),
        checks=tuple(CheckSpec(f"1:a>b:{p}", 1, "b", "b", ADDR, p, "tcp") for p in sorted(want)),
        timeout_s=0.6,
        retries=2,
        concurrency=4096,
    )
    plan_file, out = tmp_path / "plan.json", tmp_path / "out.json"
    plan_file.write_text(json.dumps(encode(plan)))
    argv = [
        sys.executable,
        "-m",
        "netcheck.agent",
        "run",
        "--plan",
        str(plan_file),
        "--out",
        str(out),
    ]
    proc = subprocess.run(
        [*argv, "--mode", "connect", "--no-listen"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_lower_nofile,
    )
    assert proc.returncode == 0, proc.stderr
    batch = decode(ResultBatch, json.loads(out.read_text()))
    assert {r.port: r.state for r in batch.results} == want
    # Each connect probe may hold its 3 staggered attempts; the traceroutes share a pool of
    # slots of TRACE_SOCKETS sockets each, a quarter of what is left after the reserve.
    free = NOFILE - fd_reserve(NOFILE)
    pooled = free // 4 // TRACE_SOCKETS * TRACE_SOCKETS
    cap = (free - pooled) // 3
    assert proc.stderr.count("probe concurrency 4096 capped at") == 1, proc.stderr
    assert f"capped at {cap}: RLIMIT_NOFILE is {NOFILE}" in proc.stderr


def test_cap_is_the_plan_concurrency_when_it_fits() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert fd_capped_concurrency(10, 3) == 10
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[1] == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= soft


def test_the_trace_pool_is_counted_once_and_bounded() -> None:
    """A pool that fits is granted whole and comes out of the probes' share once; one that
    does not gets a quarter of what is left after the reserve."""
    conc, slots = fd_budget(10, 3, 8, TRACE_SOCKETS)
    assert (conc, slots) == (10, 8)
    conc, slots = fd_budget(1 << 20, 3, 1 << 20, TRACE_SOCKETS)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    free = soft - fd_reserve(soft)
    assert slots == free // 4 // TRACE_SOCKETS
    assert conc == (free - slots * TRACE_SOCKETS) // 3
