"""A root agent in SYN mode under a connection flood at its stand-in listeners, while it
probes: its memory and descriptors during the flood, against the same agent just before.

Everything runs in a network namespace of its own with only loopback (127.0.0.0/8): the
controller (a real ``netcheck-controller serve`` process), the agent (``serve --mode syn``)
and the flooder, which raises its own RLIMIT_NOFILE, opens the connections from 20 source
addresses, holds them a few seconds and exits by itself. ``tests/test_robust_agent_flood.py``
asserts on one run; ``python -m bench --only flood`` reports the figures.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.report import Section, Target
from bench.stats import median
from deploy.lab.argv import Insecure, agent_argv, controller_argv
from deploy.lab.layout import LabHost

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent
CONTROLLER_PORT = 18080
HEALTH_PORT = 19101
LISTEN_PORT = 2222
VC_PORT = 4443
AGENT_ADDR = "127.0.0.11"
VC_ADDR = "127.0.0.12"
SOURCES = 20
HOLD_S = 6.0
RSS_BUDGET_MB = 40.0  # 10^6 bytes, as the target is written
TOKEN = "flood-bench-token"  # the lab's own shared token, for this namespace only

FLOODER = """
import resource, socket, sys, time
n, sources, dst = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
port, hold = int(sys.argv[4]), float(sys.argv[5])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1024, n + 1024))
socks = []
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.bind((f"127.0.1.{1 + i % sources}", 0))
    s.connect_ex((dst, port))
    socks.append(s)
    if i % 500 == 499:
        time.sleep(0.02)
time.sleep(hold)
for s in socks:
    s.close()
print(len(socks))
"""

TOPOLOGY = f"""\
version: 1
matrix: matrix.yaml
policy:
  probe_timeout_seconds: 1.0
  probe_min_timeout_seconds: 0
  probe_period_seconds: 1
roles:
  pio: {{name: PIO, site: on_prem, agent: true}}
  vc: {{name: vCenter, site: on_prem, agent: false}}
interactions:
  - id: 4
    title: pio to pio
    source: pio
    destination: pio
    flows:
      - {{ports: "{LISTEN_PORT}", service: ssh}}
  - id: 2
    title: pio to vc
    source: pio
    destination: vc
    flows:
      - {{ports: "{VC_PORT}", service: tcp}}
modes:
  deploy:
    title: Deploy
    interactions: [4, 2]
"""
INVENTORY = f"""\
version: 1
site: flood
hosts:
  pio:
    - {{name: pio-1, address: {AGENT_ADDR}}}
  vc:
    - {{name: vc-1, address: {VC_ADDR}}}
"""
MATRIX = """\
version: 1
rows:
  - {family: RHEL, os: "RHEL 7.4", boot: UEFI, vcd_warm: "Qualified", vcs_warm: "Qualified",
     any_cold: "Qualified", static_ip_vcd_cold: "Qualified", static_ip_vcd_warm: "Qualified"}
"""


@dataclasses.dataclass(frozen=True)
class FloodRun:
    connections: int  # what the flooder opened and held
    rss_before_kib: int  # VmHWM before the flood
    peak_rss_kib: int  # the highest VmRSS sampled during the flood
    hwm_kib: int  # VmHWM after the flood
    peak_fds: int
    capped: float  # connections closed at a stand-in cap (the agent's own counter)
    rounds_after: int  # results stored from rounds that began after the flood did
    agent_alive: bool
    agent_log: str


def _in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _sh(*argv: str, check: bool = True) -> None:
    subprocess.run(argv, check=check, capture_output=True, timeout=20)


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    got = {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}
    return got["VmRSS"], got["VmHWM"]


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _health(ns: str, path: str) -> str:
    code = (
        "import urllib.request,sys;"
        f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{HEALTH_PORT}{path}',"
        "timeout=5).read().decode())"
    )
    return subprocess.run(
        _in_ns(ns, PY, "-c", code), capture_output=True, text=True, timeout=15, check=True
    ).stdout


def _stored_starts(db: Path) -> list[float]:
    from netcheck.controller.store import Store

    if not db.exists():
        return []
    try:
        store = Store.open(db)
    except Exception:  # the controller is still creating it
        return []
    try:
        return sorted(r.started_at for r in store.results())
    finally:
        store.close()


@contextmanager
def _netns(prefix: str) -> Iterator[str]:
    name = f"{prefix}-{os.getpid()}"
    _sh("ip", "netns", "add", name)
    try:
        _sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _sh("ip", "netns", "delete", name, check=False)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _spawn(ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(_in_ns(ns, *argv), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def _write_site(workdir: Path) -> Path:
    """The site's files in `workdir`; the token file (0600)."""
    (workdir / "matrix.yaml").write_text(MATRIX)
    (workdir / "topology.yaml").write_text(TOPOLOGY)
    (workdir / "inventory.yaml").write_text(INVENTORY)
    token = workdir / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return token


@dataclasses.dataclass
class _Sampled:
    opened: int = 0
    peak_rss: int = 0
    peak_fds: int = 0
    flooder_err: str = ""


def _flood(ns: str, agent: subprocess.Popen[bytes], connections: int) -> _Sampled:
    """Run the flooder to its end, sampling the agent's RSS and descriptors meanwhile."""
    argv = [PY, "-c", FLOODER, str(connections), str(SOURCES), AGENT_ADDR]
    flooder = subprocess.Popen(
        _in_ns(ns, *argv, str(LISTEN_PORT), str(HOLD_S)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    got = _Sampled()
    started = time.monotonic()
    while flooder.poll() is None and agent.poll() is None and time.monotonic() - started < 60:
        got.peak_rss = max(got.peak_rss, rss_kib(agent.pid)[0])
        got.peak_fds = max(got.peak_fds, _fd_count(agent.pid))
        time.sleep(0.1)
    try:
        out, got.flooder_err = flooder.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        flooder.kill()
        out, got.flooder_err = flooder.communicate()
    got.opened = int(out.strip()) if out.strip().isdigit() else 0
    return got


def run_flood(workdir: Path, connections: int = 10_000, prefix: str = "nct-flood") -> FloodRun:
    """One flood of `connections` at the agent's ssh stand-in, in a namespace of its own."""
    token = _write_site(workdir)
    db, agent_log = workdir / "controller.sqlite", workdir / "agent.log"
    url = f"http://127.0.0.1:{CONTROLLER_PORT}"
    insecure = Insecure(token)
    controller = controller_argv(
        workdir / "topology.yaml",
        workdir / "inventory.yaml",
        f"127.0.0.1:{CONTROLLER_PORT}",
        db,
        insecure,
    )
    pio = LabHost("pio", "on_prem", "pio-1", 1, AGENT_ADDR, AGENT_ADDR, agent=True)
    agent_argv_ = agent_argv(pio, url, insecure, mode="syn")
    agent_argv_ += ["--splay", "0", "--spool-dir", str(workdir / "spool")]
    agent_argv_ += ["--health-listen", f"127.0.0.1:{HEALTH_PORT}"]
    metrics = ""
    with _netns(prefix) as ns:
        ctl = _spawn(ns, controller, workdir / "controller.log")
        agent: subprocess.Popen[bytes] | None = None
        try:
            time.sleep(1.5)
            agent = _spawn(ns, agent_argv_, agent_log)
            for _ in range(100):  # 30 s at most for a first stored round
                if _stored_starts(db):
                    break
                time.sleep(0.3)
            else:
                raise RuntimeError(f"no round stored: {agent_log.read_text()[-3000:]}")
            _, hwm_before = rss_kib(agent.pid)
            flood_start = time.time()
            sampled = _flood(ns, agent, connections)
            if agent.poll() is None:
                metrics = _health(ns, "/metrics")
            time.sleep(3)  # rounds go on after the flood
            after = [t for t in _stored_starts(db) if t > flood_start]
            alive = agent.poll() is None
            hwm = rss_kib(agent.pid)[1] if alive else 0
        finally:
            _stop(agent)
            _stop(ctl)
    if not sampled.opened:
        raise RuntimeError(f"the flooder opened nothing: {sampled.flooder_err[-2000:]}")
    capped = sum(
        float(v)
        for v in re.findall(
            r"^netcheck_agent_standin_connections_capped_total\S* (\S+)$", metrics, re.M
        )
    )
    return FloodRun(
        connections=sampled.opened,
        rss_before_kib=hwm_before,
        peak_rss_kib=sampled.peak_rss,
        hwm_kib=hwm,
        peak_fds=sampled.peak_fds,
        capped=capped,
        rounds_after=len(after),
        agent_alive=alive,
        agent_log=agent_log.read_text(),
    )


def _mb(kib: float) -> float:
    return kib * 1024 / 1e6


def run_flood_bench(
    workdir: Path, repeats: int, log: Callable[[str], None], connections: int = 10_000
) -> Section:
    runs: list[FloodRun] = []
    for i in range(repeats):
        run_dir = workdir / f"flood-{i}"
        run_dir.mkdir(parents=True, exist_ok=True)
        log(f"flood {i + 1}/{repeats}: {connections} connections at a SYN-mode agent")
        runs.append(run_flood(run_dir, connections, prefix="ncbench-flood"))
    before = median([r.rss_before_kib for r in runs])
    hwm = median([r.hwm_kib for r in runs])
    peak_fds = max(r.peak_fds for r in runs)
    alive = all(r.agent_alive and r.rounds_after > 0 for r in runs)
    rows = tuple(
        (
            str(i + 1),
            f"{r.connections:,}",
            f"{_mb(r.rss_before_kib):.1f} MB",
            f"{_mb(r.hwm_kib):.1f} MB",
            f"{r.hwm_kib / r.rss_before_kib:.2f}",
            str(r.peak_fds),
            f"{r.capped:,.0f}",
            "yes" if r.agent_alive else "NO",
            str(r.rounds_after),
        )
        for i, r in enumerate(runs)
    )
    targets = (
        Target(
            name="agent RSS under a 10,000-connection flood (SYN mode, root)",
            goal=f"<= {RSS_BUDGET_MB:g} MB, agent up and probing",
            measured=(
                f"{_mb(hwm):.1f} MB peak (VmHWM), {hwm / before:.2f} x the same agent just "
                f"before the flood ({_mb(before):.1f} MB); up and probing: "
                f"{'yes' if alive else 'NO'}"
            ),
            met=_mb(hwm) <= RSS_BUDGET_MB and alive,
            gap="" if _mb(hwm) <= RSS_BUDGET_MB else f"{_mb(hwm) - RSS_BUDGET_MB:.1f} MB over",
        ),
    )
    method = (
        f"A real `netcheck-controller serve` and a root `netcheck-agent serve --mode syn` in a "
        f"network namespace of their own (loopback only); a flooder opens {connections:,} TCP "
        f"connections from {SOURCES} source addresses at the agent's ssh stand-in, holds them "
        f"{HOLD_S:g} s and exits, while the agent probes every second. Memory is VmHWM from "
        "/proc/<pid>/status before and after the flood (the peer figure is the same agent "
        f"before the flood, in the same run); peak descriptors sampled every 100 ms. "
        f"{repeats} run(s); medians."
    )
    return Section(
        title="Agent under a connection flood",
        method=method,
        headers=(
            "run",
            "connections",
            "RSS before",
            "RSS peak",
            "ratio",
            "peak fds",
            "capped",
            "agent up",
            "rounds stored after",
        ),
        rows=rows,
        targets=targets,
        notes=(f"peak descriptors over all runs: {peak_fds}",),
    )
