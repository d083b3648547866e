"""Full HDM audit in the lab: netcheck against nmap (-sT, -sS) and blackbox_exporter.

Every tool probes the same flows (the lab's expected checks) from the same source
namespaces, all sources at once. netcheck warm: agents in ``serve`` mode, the slowest agent's
round from its first probe to the commit of its batch. netcheck cold: every agent
``serve --once --settle COLD_SETTLE_S --linger COLD_LINGER_S`` launched at the same moment,
timed from the launch until the controller's JSON report has a verdict (pass/fail) for every
expected check (so it includes interpreter start-up, registration and the settle wait).
nmap: one process per (source, destination) host pair, all at once, timed from launch to the
last exit. blackbox_exporter: one exporter per source namespace, every ``/probe`` of that
source concurrently, timed from the first request to the last answer.

The lab is deploy/lab's (:func:`deploy.lab.lab.session`, prefix ``ncbench-``); results are read
through the controller's HTTP API (``/api/v1/report``) and its store's Python API
(:class:`netcheck.controller.store.Store`), never with SQL of our own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import blackbox, nmap
from bench.cmd import NOFILE, BenchError, kill, spawn
from bench.report import Section, Target, secs
from bench.stats import median
from deploy.lab import lab as labmod
from deploy.lab import procs
from deploy.lab.lab import Lab
from deploy.lab.layout import LabHost
from deploy.lab.scenario import load_scenario
from netcheck.controller.spec import Spec
from netcheck.controller.store import Store

SCENARIO = Path(__file__).resolve().parent / "scenarios" / "quarter.yaml"
TOPOLOGY = labmod.TOPOLOGY  # the spec's own policy (period 300 s) for cold rounds
PREFIX = "ncbench-"  # the benchmark's lab: never a demo's (nclab-) or a test's namespaces
# The warm agents' probe period (the spec's 300 s would make the benchmark wait minutes).
WARM_PERIOD_S = 3.0
# Cold: agents launched together hold their listeners and wait this long before probing, so
# that every peer is listening when probed. It must cover the spread of their start-up and
# registration: 7 agents on this 2-core machine registered within 0.4 s of each other (the
# report prints how far apart their first listeners came up, per run); 2 s leaves room for
# a loaded machine ...
COLD_SETTLE_S = 2.0
# ... and keep them this long after reporting their round, for the peers still probing
# (>= the settle plus a round: the 2 s timeout and the protocol checks).
COLD_LINGER_S = 6.0


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    repeats: int
    nmap_bound_s: float
    poll_s: float = 0.2


@dataclasses.dataclass(frozen=True)
class Check:
    check_id: str
    src_host: str
    dst_host: str
    dst_address: str
    port: int


@dataclasses.dataclass
class NetcheckRun:
    wall_s: float
    states: dict[str, str]  # check_id -> probe state
    verdicts: Counter[str]
    # Cold: how far apart the agents' first listeners came up (what the settle must cover).
    listeners_spread_s: float = 0.0


@contextlib.contextmanager
def bench_lab(period_s: float = 300.0) -> Iterator[Lab]:
    """deploy/lab's lab under ``ncbench-``: network, scenario and files, nothing started (the
    lab's topology copy gets ``period_s``); everything removed on exit."""
    with tempfile.TemporaryDirectory(prefix="ncbench-lab-") as tmp:
        state = Path(tmp) / "state"
        with labmod.session(
            str(SCENARIO), PREFIX, state, kind="netns", start=False, period_s=period_s
        ) as lab:
            yield lab


def start_agent(
    lab: Lab, h: LabHost, once: bool, settle_s: float = 0.0, linger_s: float = 0.0
) -> subprocess.Popen[bytes]:
    """A connect-mode agent on ``h`` with the open-file limit a systemd unit would give it."""
    return lab.start_agent(h, "connect", once, settle_s, linger_s, nofile=NOFILE)


def _listeners_spread(doc: dict[str, Any], agents: set[str]) -> float:
    """How far apart the agents' first listeners came up (the report's listener ``since``)."""
    firsts = [
        min(ls["since"] for ls in doc["listeners"][h]) for h in agents if doc["listeners"].get(h)
    ]
    return max(firsts) - min(firsts) if firsts else 0.0


def _report(lab: Lab) -> dict[str, Any]:
    status, body = lab.get("/api/v1/report?format=json", 10.0)
    if status != 200:
        raise BenchError(f"report: HTTP {status}")
    doc: dict[str, Any] = json.loads(body)
    return doc


def cold_round(lab: Lab, db: Path, cfg: AuditConfig, bound_s: float) -> NetcheckRun:
    """Every agent ``serve --once --settle --linger`` at the same moment; launch -> no check
    ``unknown``."""
    ctl = lab.start_controller(TOPOLOGY, db)
    agents: list[subprocess.Popen[bytes]] = []
    hosts = [h for h in lab.layout.hosts if h.agent]
    try:
        t0 = time.monotonic()
        agents = [start_agent(lab, h, True, COLD_SETTLE_S, COLD_LINGER_S) for h in hosts]
        doc: dict[str, Any] = {}
        while time.monotonic() - t0 < bound_s:
            doc = _report(lab)
            if doc["summary"]["unknown"] == 0:
                break
            time.sleep(cfg.poll_s)
        wall = time.monotonic() - t0
        if doc["summary"]["unknown"]:
            raise BenchError(f"{doc['summary']['unknown']} checks still unknown after {bound_s}s")
        for a in agents:
            a.wait(30 + COLD_LINGER_S)
        return NetcheckRun(
            wall,
            {c["check_id"]: c["state"] for c in doc["checks"]},
            Counter(c["verdict"] for c in doc["checks"]),
            _listeners_spread(doc, {h.name for h in hosts}),
        )
    finally:
        for a in agents:
            procs.stop(a)
        procs.stop(ctl)


def _rounds(store: Store) -> dict[str, tuple[float, float, float]]:
    """src host -> (first probe start, last probe start, its last batch committed), from the
    newest result per check (``Store.results``) and the agents' ``last_report``
    (``Store.agents``: the commit time of the agent's newest batch)."""
    starts: dict[str, list[float]] = defaultdict(list)
    for r in store.results():
        starts[r.src_host].append(r.started_at)
    committed = {a.host: a.last_report for a in store.agents() if a.last_report is not None}
    return {h: (min(ts), max(ts), committed[h]) for h, ts in starts.items() if h in committed}


def warm_rounds(
    spec: Spec, lab: Lab, cfg: AuditConfig, log: Callable[[str], None]
) -> tuple[list[float], NetcheckRun]:
    """Agents in ``serve`` mode (the lab's topology copy: period WARM_PERIOD_S) holding their
    listeners; per repeat, the slowest agent's round from its first probe to the commit of
    its batch."""
    db = lab.state / "warm.db"
    ctl = lab.start_controller(lab.topology, db)
    store = Store.open(db)  # read-only use: results() and agents()
    agents: list[subprocess.Popen[bytes]] = []
    walls: list[float] = []
    try:
        hosts = [h for h in lab.layout.hosts if h.agent]
        agents = [start_agent(lab, h, once=False) for h in hosts]
        missing = lab.wait_listening(spec, 30.0, hosts)
        if missing:
            raise BenchError(f"agents not listening after 30 s: {', '.join(missing)}")
        probing = {c.src_host for c in _checks(lab)}
        mark = time.time()
        for r in range(cfg.repeats + 1):  # the first complete round is a warm-up
            deadline = time.monotonic() + 10 * WARM_PERIOD_S + 30
            # Each host's round as first seen: a later poll could pair its results with the
            # commit of a later batch (an agent's next round starts with one), 3 s late.
            rounds: dict[str, tuple[float, float, float]] = {}
            while time.monotonic() < deadline:
                for h, seen in _rounds(store).items():
                    if h in probing and h not in rounds and seen[0] > mark:
                        rounds[h] = seen
                if probing <= set(rounds):
                    break
                time.sleep(cfg.poll_s)
            else:
                raise BenchError("no complete warm round from every agent in time")
            spread = max(rounds[h][1] - rounds[h][0] for h in probing)
            wall = max(rounds[h][2] - rounds[h][0] for h in probing)
            if r:
                walls.append(wall)
            log(f"audit warm round {r}: slowest agent {wall:.2f} s (start spread {spread:.2f} s)")
            mark = time.time()
        doc = _report(lab)
        return walls, NetcheckRun(
            median(walls),
            {c["check_id"]: c["state"] for c in doc["checks"]},
            Counter(c["verdict"] for c in doc["checks"]),
        )
    finally:
        store.close()
        for a in agents:
            procs.stop(a)
        procs.stop(ctl)


def _checks(lab: Lab) -> list[Check]:
    doc = _report(lab)
    return [
        Check(c["check_id"], c["src_host"], c["dst_host"], c["dst_address"], int(c["port"]))
        for c in doc["checks"]
    ]


def _by_pair(checks: list[Check]) -> dict[tuple[str, str], list[Check]]:
    out: dict[tuple[str, str], list[Check]] = defaultdict(list)
    for c in checks:
        out[(c.src_host, c.dst_host)].append(c)
    return out


def nmap_round(
    lab: Lab, checks: list[Check], kind: str, bound_s: float
) -> tuple[float, bool, dict[str, str]]:
    """All (source, destination) pairs at once; wall, finished, check_id -> nmap state."""
    pairs = _by_pair(checks)
    running: dict[tuple[str, str], subprocess.Popen[str]] = {}
    t0 = time.monotonic()
    try:
        for (src, dst), cs in pairs.items():
            argv = [
                "nmap",
                f"-s{kind}",
                "-Pn",
                "-T4",
                "-n",
                "-p",
                nmap.port_arg([c.port for c in cs]),
                "-oX",
                "-",
                cs[0].dst_address,
            ]
            running[(src, dst)] = spawn(argv, lab.layout.by_name(src).netns, stdout=subprocess.PIPE)
        outputs: dict[tuple[str, str], str] = {}
        finished = True
        for key, p in running.items():
            left = max(0.1, bound_s - (time.monotonic() - t0))
            try:
                out, _ = p.communicate(timeout=left)
                outputs[key] = out
            except subprocess.TimeoutExpired:
                finished = False
                kill(p)
                outputs[key] = ""
        wall = time.monotonic() - t0
    finally:
        for p in running.values():
            kill(p)
    states: dict[str, str] = {}
    for key, cs in pairs.items():
        found, _ = nmap.parse_xml(outputs.get(key, ""), [c.port for c in cs])
        for c in cs:
            states[c.check_id] = found.get((c.dst_address, c.port), "none")
    return wall, finished, states


def blackbox_round(
    lab: Lab, checks: list[Check], timeout_s: float, base: str
) -> tuple[float, dict[str, str]]:
    by_src: dict[str, list[Check]] = defaultdict(list)
    for c in checks:
        by_src[c.src_host].append(c)
    workers = []
    t0 = time.monotonic()
    for src, cs in by_src.items():
        args = {
            "exporter": base,
            "module": blackbox.MODULE,
            "timeout_s": timeout_s,
            "targets": [[c.dst_address, c.port] for c in cs],
        }
        argv = [sys.executable, "-m", "bench.worker", "blackbox", json.dumps(args)]
        workers.append((cs, spawn(argv, lab.layout.by_name(src).netns, stdout=subprocess.PIPE)))
    states: dict[str, str] = {}
    for cs, p in workers:
        out, err = p.communicate(timeout=60 + timeout_s)
        if p.returncode != 0:
            raise BenchError(f"blackbox worker: {err.strip()[-300:]}")
        found = json.loads(out.strip().splitlines()[-1])["states"]
        for c in cs:
            states[c.check_id] = found[f"{c.dst_address}:{c.port}"]
    return time.monotonic() - t0, states


def agreement(netcheck: dict[str, str], other: dict[str, str], binary: bool = False) -> int:
    """How many checks the other tool saw in the same state as netcheck."""
    n = 0
    for cid, state in netcheck.items():
        want = ("open" if state == "open" else "not-open") if binary else nmap.NMAP_STATE.get(state)
        n += other.get(cid) == want
    return n


def run_audit(spec: Spec, cfg: AuditConfig, log: Callable[[str], None]) -> Section:
    timeout = spec.policy.probe_timeout_seconds
    cold: list[NetcheckRun] = []
    tools: dict[str, list[float]] = defaultdict(list)
    agree: dict[str, list[int]] = defaultdict(list)
    unfinished: set[str] = set()
    with bench_lab(WARM_PERIOD_S) as lab, tempfile.TemporaryDirectory() as tmp:
        standins = lab.start_standins(spec, [h for h in lab.layout.hosts if not h.agent])
        try:
            checks = _checks_once(lab)
            for r in range(cfg.repeats):
                nc = cold_round(lab, lab.state / f"cold{r}.db", cfg, 120.0)
                cold.append(nc)
                log(
                    f"audit {r + 1}/{cfg.repeats}: cold {nc.wall_s:.2f} s {dict(nc.verdicts)} "
                    f"(agents' listeners up within {nc.listeners_spread_s:.2f} s)"
                )
            warm_walls, warm = warm_rounds(spec, lab, cfg, log)
            for p in standins:
                procs.stop(p)
            # The agents are gone: stand-ins hold every host's ports for the other tools.
            standins = lab.start_standins(spec, lab.layout.hosts)
            ref = warm.states
            sources = sorted({c.src_host for c in checks})
            for r in range(cfg.repeats):
                for kind in ("T", "S"):
                    wall, done, states = nmap_round(lab, checks, kind, cfg.nmap_bound_s)
                    label = f"nmap -s{kind} -Pn -T4"
                    tools[label].append(wall)
                    agree[label].append(agreement(ref, states))
                    if not done:
                        unfinished.add(label)
                    log(f"audit {r + 1}/{cfg.repeats}: {label} {wall:.2f} s")
            namespaces = [lab.layout.by_name(s).netns for s in sources]
            with blackbox.exporters(namespaces, timeout, Path(tmp)) as base:
                for r in range(cfg.repeats):
                    wall, states = blackbox_round(lab, checks, timeout, base)
                    label = "blackbox_exporter tcp_connect"
                    tools[label].append(wall)
                    agree[label].append(agreement(ref, states, binary=True))
                    log(f"audit {r + 1}/{cfg.repeats}: {label} {wall:.2f} s")
        finally:
            for p in standins:
                procs.stop(p)
        blocks = load_scenario(str(SCENARIO), spec, lab.layout).blocks
    blocked = sum(len(b.src) * len(b.dst) * len(b.ports) for b in blocks)
    return _section(
        spec, cfg, lab, blocked, warm_walls, warm, cold, tools, agree, unfinished, len(checks),
        len(sources),
    )  # fmt: skip


def _checks_once(lab: Lab) -> list[Check]:
    ctl = lab.start_controller(TOPOLOGY, lab.state / "checks.db")
    try:
        return _checks(lab)
    finally:
        procs.stop(ctl)


def _mismatch(run: NetcheckRun, ref: NetcheckRun) -> int:
    return sum(run.states.get(cid) != st for cid, st in ref.states.items())


def _section(
    spec: Spec,
    cfg: AuditConfig,
    lab: Lab,
    blocked: int,
    warm_walls: list[float],
    warm: NetcheckRun,
    cold: list[NetcheckRun],
    tools: dict[str, list[float]],
    agree: dict[str, list[int]],
    unfinished: set[str],
    n_checks: int,
    n_sources: int,
) -> Section:
    timeout = spec.policy.probe_timeout_seconds
    nc = median(warm_walls)
    cold_wall = median([r.wall_s for r in cold])
    states = Counter(warm.states.values())
    wrong = max(_mismatch(r, warm) for r in cold)
    rows: list[tuple[str, ...]] = [
        (
            "netcheck, warm round (agents serving, plan in hand)",
            secs(nc),
            str(len(warm_walls)),
            f"{n_checks}/{n_checks} (reference)",
            "1.00 x",
            ", ".join(f"{k} {v}" for k, v in sorted(states.items())),
        ),
        (
            f"netcheck, cold (every agent `serve --once --settle {COLD_SETTLE_S:g} "
            f"--linger {COLD_LINGER_S:g}` launched at once; includes the {COLD_SETTLE_S:g} s "
            "settle)",
            secs(cold_wall),
            str(len(cold)),
            f"{n_checks - wrong}/{n_checks} (worst run)",
            f"{cold_wall / nc:.2f} x",
            ", ".join(f"{k} {v}" for k, v in sorted(Counter(cold[-1].states.values()).items())),
        ),
    ]
    targets = [
        Target(
            name="full HDM audit vs probe timeout (warm round)",
            goal=f"<= 1.2 x timeout ({1.2 * timeout:g} s)",
            measured=f"{secs(nc)} = {nc / timeout:.2f} x timeout",
            met=nc <= 1.2 * timeout,
            gap="" if nc <= 1.2 * timeout else f"{nc - 1.2 * timeout:.2f} s over",
        )
    ]
    for label, walls in tools.items():
        w = median(walls)
        cut = " (cut off)" if label in unfinished else ""
        rows.append(
            (
                label,
                secs(w) + cut,
                str(len(walls)),
                f"{min(agree[label])}/{n_checks}",
                f"{nc / w:.2f} x",
                "",
            )
        )
        if label.startswith("nmap -sT"):
            targets.append(
                Target(
                    name="full HDM audit vs nmap -sT -T4 (same flows, warm round)",
                    goal="<= 0.5 x nmap's wall time",
                    measured=f"{nc / w:.2f} x ({secs(nc)} vs {secs(w)})",
                    met=nc <= 0.5 * w,
                    gap="" if nc <= 0.5 * w else f"{nc - 0.5 * w:.2f} s over half of nmap's",
                )
            )
    method = (
        f"The lab's site ({len(lab.layout.hosts)} hosts, {n_checks} expected checks from "
        f"{n_sources} source hosts) in `ncbench-` namespaces behind two nftables routers, "
        f"scenario `bench/scenarios/quarter.yaml` ({blocked} host-port flows dropped). "
        f"Probe policy: timeout {timeout:g} s, retries {spec.policy.probe_retries}, protocol "
        "checks on open ports, connect mode. **Warm round** (the target's figure): agents "
        f"run `netcheck-agent serve` (plan period {WARM_PERIOD_S:g} s) and hold their "
        "listeners; for each round, the slowest agent's time from its first probe start to "
        "the controller's commit of its batch (the newest results' `started_at` and the "
        "agent's `last_report`, read through the store's Python API, each host's round as "
        "first seen, before its next batch moves `last_report`); after a warm-up "
        "round, median of "
        f"{len(warm_walls)}. **Cold**: every agent `serve --once --settle {COLD_SETTLE_S:g} "
        f"--linger {COLD_LINGER_S:g}` launched at the same moment (each holds its listeners, "
        f"reports them, waits {COLD_SETTLE_S:g} s so that every peer is listening, probes, "
        f"reports, and keeps its listeners {COLD_LINGER_S:g} s more for the peers still "
        "probing), wall from the launch until the first poll (every "
        f"{cfg.poll_s:g} s) of `GET /api/v1/report?format=json` with no `unknown` check; it "
        f"includes interpreter start-up, registration and the {COLD_SETTLE_S:g} s settle "
        "(the agents' first listeners came up within "
        f"{max(r.listeners_spread_s for r in cold):.2f} s of each other, worst run). Other "
        "tools: same checks, same source namespaces, all at once, stand-ins holding every "
        "host's ports; median of "
        f"{cfg.repeats} run(s). Agreement: checks where the tool saw the same state as "
        "netcheck's warm round (nmap: open/closed/filtered; blackbox: open/not open), worst "
        "run. Warm verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(warm.verdicts.items()))
    )
    return Section(
        title="Full HDM audit in the lab (about a quarter of the ports dropped)",
        method=method,
        headers=(
            "tool",
            "wall (median)",
            "runs",
            "agreement with netcheck",
            "netcheck warm / tool",
            "netcheck states",
        ),
        rows=tuple(rows),
        targets=tuple(targets),
    )


__all__ = ["AuditConfig", "run_audit"]
