"""Controller ingest: N simulated agents (aiohttp clients) against the real controller,
over plain HTTP and over mutual TLS in the same run.

The controller is ``netcheck-controller serve`` as the lab starts it
(:func:`deploy.lab.argv.controller_argv`), on the loopback, in its own process: once with
``--insecure-http`` and the shared token (:class:`~deploy.lab.argv.Insecure`), once with
``--pki DIR`` (:class:`~deploy.lab.argv.ControllerTrust`), a CA made by
:func:`netcheck.controller.pki.init_ca` and one client certificate per simulated agent
(:func:`~netcheck.controller.pki.new_client_key_and_cert`). Reads are open on both
(``--open-reads``). Each agent is one aiohttp session with its own connection (and, over TLS,
its own SSL context and certificate): the handshake is paid once per agent, at registration.

The agents are ``ROLE`` hosts (PIO: 60 outbound checks each, the busiest role), the
inventory the example's with ``ROLE``'s hosts replaced by N. Each agent registers (a real
Registration with the inventory's address; the controller answers its Plan), then posts
ResultBatches of one result per check of that plan (over mutual TLS the controller refuses
anything else) with one listener state of the plan. The SQLite file is in a temp dir (WAL,
synchronous=FULL, as the store opens it). Two loads: a burst (every agent posts at the same
moment, every round) and a paced round (the agents' posts spread evenly over
``paced_window_s``). While the bursts run, one reader fetches the page, the JSON report and
``/metrics`` in turn, without pause: their latencies are the "readers never block writers"
figures (issue 12).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import secrets
import socket
import ssl
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.cmd import REPO, BenchError, kill, spawn
from bench.report import Section, Target, secs
from bench.stats import median, percentile
from deploy.lab.argv import ControllerTrust, Insecure, controller_argv
from netcheck.controller import pki

ROLE = "pio"
RESULTS_PER_BATCH = 60  # the checks of one PIO plan in the example topology
TOPOLOGY = REPO / "topology.yaml"
# What a reader fetches in turn while the bursts run: the page, the data its script polls,
# the whole JSON report, the metrics.
READ_PATHS = ("/", "/api/v1/page", "/api/v1/report", "/metrics")
TRANSPORTS = ("http", "mtls")
LABEL = {"http": "plain HTTP", "mtls": "mutual TLS"}


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    agents: tuple[int, ...]
    repeats: int
    paced_window_s: float = 5.0


def _host(i: int) -> tuple[str, str]:
    return f"bench-pio-{i}", f"198.18.{20 + i // 250}.{i % 250 + 1}"


def inventory_with_agents(n: int) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "inventory.example.yaml").read_text())
    doc["hosts"][ROLE] = [{"name": h, "address": a} for h, a in map(_host, range(n))]
    return doc


def batch_body(plan: dict[str, Any], round_no: int, now: float, churn: bool = False) -> bytes:
    """A ResultBatch answering every check of `plan` (the controller's Plan, as JSON).

    A quarter of the checks filtered, the rest open. Steady (a site as it mostly is): the
    same checks every round. ``churn``: the filtered quarter moves by one check each round,
    so half the checks change state every round and each change is a history write (a
    firewall flapping on every check at once: the worst case for the store)."""
    host, address = plan["host"], plan["address"]
    started = now - 1.0  # inside the controller's clock window
    results = [
        {
            "check_id": c["check_id"],
            "interaction": c["interaction"],
            "src_host": host,
            "src_address": address,
            "dst_host": c["dst_host"],
            "dst_address": c["dst_address"],
            "port": c["port"],
            "state": "open" if (k + (round_no if churn else 0)) % 4 else "filtered",
            "mode": "connect",
            "attempts": 1,
            "started_at": started,
            "latency_s": 0.0004,
        }
        for k, c in enumerate(plan["checks"])
    ]
    listeners = [
        {"port": ls["port"], "state": "listening", "since": started} for ls in plan["listen"][:1]
    ]
    body = {
        "role": plan["role"],
        "host": host,
        "results": results,
        "listeners": listeners,
        "sent_at": now,
        "peers_until": now,  # as a real agent says with every batch (its peers: none here)
    }
    return json.dumps(body).encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class Running:
    """A controller under test: its URL, pid, and how an agent (or the reader) connects."""

    base: str
    pid: int
    agent_headers: dict[str, str]
    agent_ssl: Callable[[int], ssl.SSLContext | None]  # agent i's context (None: plain HTTP)
    reader_ssl: ssl.SSLContext | None
    reader_ca: str | None  # the CA file the reader process trusts (None: plain HTTP)


def _client_contexts(ca_dir: Path, certs_dir: Path, n: int) -> list[ssl.SSLContext]:
    """One client context per agent, each with its own key and certificate (files 0600)."""
    ca = pki.load_ca(ca_dir)
    certs_dir.mkdir(mode=0o700)
    out = []
    for i in range(n):
        key_pem, cert_pem = pki.new_client_key_and_cert(ca, pki.AgentName(ROLE, _host(i)[0]), 2)
        path = certs_dir / f"{i}.pem"
        pki.write_atomic(path, cert_pem + key_pem, 0o600)
        ctx = ssl.create_default_context(cafile=str(ca_dir / pki.CA_CERT))
        ctx.load_cert_chain(str(path))
        out.append(ctx)
    return out


@contextlib.contextmanager
def controller(n: int, transport: str) -> Iterator[Running]:
    """A controller process with an inventory of `n` agents, over `transport`."""
    with tempfile.TemporaryDirectory(prefix="ncbench-ingest-") as tmp:
        d = Path(tmp)
        inv = d / "inventory.yaml"
        inv.write_text(yaml.safe_dump(inventory_with_agents(n), sort_keys=False))
        port = _free_port()
        trust: ControllerTrust | Insecure
        if transport == "mtls":
            pki.init_ca(d / "pki", ["localhost"], ["127.0.0.1"])
            contexts = _client_contexts(d / "pki", d / "agents", n)
            ca_file = str(d / "pki" / pki.CA_CERT)
            reader = ssl.create_default_context(cafile=ca_file)
            trust = ControllerTrust(d / "pki", None)
            scheme, headers = "https", {}
        else:
            token = secrets.token_urlsafe(24)
            token_file = d / "token"
            token_file.touch(mode=0o600)
            token_file.write_text(token)
            contexts, reader = [], None
            ca_file = None
            trust = Insecure(token_file)
            scheme, headers = "http", {"Authorization": f"Bearer {token}"}
        argv = controller_argv(TOPOLOGY, inv, f"127.0.0.1:{port}", d / "netcheck.db", trust)
        with open(d / "controller.log", "wb") as log:
            proc = spawn(argv, stderr=log)
        try:
            yield Running(
                f"{scheme}://127.0.0.1:{port}",
                proc.pid,
                headers,
                (lambda i: contexts[i]) if contexts else (lambda i: None),
                reader,
                ca_file,
            )
        finally:
            kill(proc)


async def _wait_ready(session: aiohttp.ClientSession, base: str, bound_s: float = 30.0) -> None:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(base + "/healthz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise BenchError(f"the controller at {base} did not answer /healthz within {bound_s:g} s")


@dataclasses.dataclass
class Measured:
    register_rtt: list[float] = dataclasses.field(default_factory=list)
    burst_rtt: list[float] = dataclasses.field(default_factory=list)
    burst_rate: list[float] = dataclasses.field(default_factory=list)  # results/s per round
    paced_rtt: list[float] = dataclasses.field(default_factory=list)
    accepted: int = 0
    server_cpu_s: float = 0.0
    burst_wall_s: list[float] = dataclasses.field(default_factory=list)
    # path -> latencies of the reader's GETs while the bursts ran
    reader_rtt: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    # path -> (bytes as sent, bytes decoded, the reader's seconds to decode them)
    reader_sizes: dict[str, tuple[int, int, float]] = dataclasses.field(default_factory=dict)


async def _read_while(
    session: aiohttp.ClientSession,
    base: str,
    stop: Any,
    out: dict[str, list[float]],
    last: dict[str, tuple[str, bytes]],
) -> None:
    """GET each of READ_PATHS in turn until `stop` is set, recording each latency: request
    sent to the last byte of the body as sent (gzip, as a browser or Prometheus asks for it;
    decompressing is the client's work, measured apart: :func:`_inflate`)."""
    while not stop.is_set():
        for path in READ_PATHS:
            t0 = time.perf_counter()
            async with session.get(base + path, auto_decompress=False) as r:
                body = await r.read()
                status = r.status
            if status != 200:
                raise BenchError(f"GET {path} while ingesting: HTTP {status}")
            out.setdefault(path, []).append(time.perf_counter() - t0)
            last[path] = (r.headers.get("Content-Encoding", ""), body)


def _inflate(last: dict[str, tuple[str, bytes]]) -> dict[str, tuple[int, int, float]]:
    """path -> (bytes as sent, bytes decoded, seconds this client took to decode them)."""
    sizes = {}
    for path, (encoding, body) in last.items():
        t0 = time.perf_counter()
        decoded = zlib.decompress(body, 16 + zlib.MAX_WBITS) if encoding == "gzip" else body
        sizes[path] = (len(body), len(decoded), time.perf_counter() - t0)
    return sizes


def _reader_process(
    base: str, ca_file: str | None, ready: Any, go: Any, stop: Any, conn: Any
) -> None:
    """The reader, in a process of its own (as a browser or Prometheus is): its latencies
    are the controller's, not those of the agents' client loop it would otherwise share
    (over TLS the page's records were decrypted between 1,000 agents' callbacks)."""

    async def main() -> tuple[dict[str, list[float]], dict[str, tuple[int, int, float]]]:
        ctx = ssl.create_default_context(cafile=ca_file) if ca_file else None
        out: dict[str, list[float]] = {}
        last: dict[str, tuple[str, bytes]] = {}
        async with _session({"Accept-Encoding": "gzip"}, ctx) as session:
            ready.set()
            go.wait()
            await _read_while(session, base, stop, out, last)
        return out, _inflate(last)

    try:
        conn.send(asyncio.run(main()))
    except Exception as exc:  # the parent raises it
        conn.send(BenchError(f"reader: {exc}"))


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, rtts: list[float]
) -> dict[str, Any]:
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        answer: dict[str, Any] = await r.json(content_type=None)
        status = r.status
    rtts.append(time.perf_counter() - t0)
    if status != 200:
        raise BenchError(f"POST {url}: HTTP {status} {answer}")
    return answer


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _session(headers: dict[str, str], ctx: ssl.SSLContext | None) -> aiohttp.ClientSession:
    # One connection per session, kept alive: one handshake per agent.
    connector = aiohttp.TCPConnector(ssl=ctx if ctx is not None else True, limit=1)
    return aiohttp.ClientSession(
        headers=headers, connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    )


async def drive(
    n: int,
    transport: str,
    repeats: int,
    window_s: float,
    log: Callable[[str], None],
    churn: bool = False,
) -> Measured:
    m = Measured()
    tag = f"ingest {n} {LABEL[transport]}" + (", churn" if churn else "")
    with controller(n, transport) as c:
        reader_session = _session({}, c.reader_ssl)
        # One session per simulated agent: each agent is its own client with its connection.
        sessions = [_session(c.agent_headers, c.agent_ssl(i)) for i in range(n)]
        try:
            await _wait_ready(reader_session, c.base)
            reg_url, res_url = c.base + "/api/v1/register", c.base + "/api/v1/results"
            regs = [
                json.dumps(
                    {"role": ROLE, "host": h, "address": a, "version": "bench", "mode": "connect"}
                ).encode()
                for h, a in map(_host, range(n))
            ]
            plans: list[dict[str, Any]] = [{} for _ in range(n)]
            sem = asyncio.Semaphore(64)

            async def register(i: int) -> None:
                async with sem:
                    plans[i] = await _post(sessions[i], reg_url, regs[i], m.register_rtt)

            await asyncio.gather(*(register(i) for i in range(n)))
            per_batch = {len(p["checks"]) for p in plans}
            if per_batch != {RESULTS_PER_BATCH}:
                raise BenchError(
                    f"{tag}: plans of {sorted(per_batch)} checks, not {RESULTS_PER_BATCH}"
                )
            log(f"{tag}: registered, register p50 {median(m.register_rtt) * 1e3:.1f} ms")
            mp = multiprocessing.get_context("spawn")
            ready, go, stop_reading = mp.Event(), mp.Event(), mp.Event()
            mine, theirs = mp.Pipe(duplex=False)
            reader = mp.Process(
                target=_reader_process,
                args=(c.base, c.reader_ca, ready, go, stop_reading, theirs),
            )
            reader.start()
            theirs.close()  # (the child's end: a crashed reader is an EOFError, not a hang)
            if not await asyncio.to_thread(ready.wait, 60.0):
                reader.kill()
                raise BenchError(f"{tag}: the reader process did not start within 60 s")
            cpu0 = _cpu_s(c.pid)
            go.set()
            for r in range(repeats):
                now = time.time()
                bodies = [batch_body(plans[i], r, now, churn) for i in range(n)]
                t0 = time.perf_counter()
                answers = await asyncio.gather(
                    *(_post(sessions[i], res_url, bodies[i], m.burst_rtt) for i in range(n))
                )
                wall = time.perf_counter() - t0
                got = sum(int(a["accepted"]) for a in answers)
                m.accepted += got
                m.burst_wall_s.append(wall)
                m.burst_rate.append(got / wall)
                log(f"{tag} burst {r + 1}/{repeats}: {got} results in {wall:.2f} s")
            m.server_cpu_s = _cpu_s(c.pid) - cpu0
            stop_reading.set()
            got_reads = await asyncio.to_thread(mine.recv)
            reader.join(30)
            if isinstance(got_reads, Exception):
                raise got_reads
            m.reader_rtt.update(got_reads[0])
            m.reader_sizes.update(got_reads[1])
            for path, rtts in m.reader_rtt.items():
                sent, decoded, inflate_s = m.reader_sizes[path]
                log(
                    f"{tag}: GET {path} during bursts p50/p99 {_p50_p99(rtts)} ms"
                    f" ({sent:,} bytes as sent, {decoded:,} decoded by the client in"
                    f" {inflate_s * 1e3:.0f} ms)"
                )
            now = time.time()
            bodies = [batch_body(plans[i], repeats, now, churn) for i in range(n)]
            start = time.perf_counter()

            async def paced(i: int) -> None:
                await asyncio.sleep(max(0.0, start + window_s * i / n - time.perf_counter()))
                await _post(sessions[i], res_url, bodies[i], m.paced_rtt)

            await asyncio.gather(*(paced(i) for i in range(n)))
        finally:
            for s in sessions:
                await s.close()
            await reader_session.close()
    return m


def _p50_p99(xs: list[float]) -> str:
    return f"{percentile(xs, 50) * 1e3:.1f} / {percentile(xs, 99) * 1e3:.1f}"


def _targets(n: int, label: str, m: Measured) -> list[Target]:
    rate = median(m.burst_rate)
    p99 = percentile(m.paced_rtt, 99) * 1e3
    burst99 = percentile(m.burst_rtt, 99) * 1e3
    out = [
        Target(
            name=f"controller ingest rate ({n} agents, burst, {label})",
            goal=">= 50,000 results/s",
            measured=f"{rate:,.0f} results/s",
            met=rate >= 50_000,
            gap="" if rate >= 50_000 else f"{50_000 / rate:.1f} x short",
        ),
        Target(
            name=f"controller p99 round trip ({n} agents, {label})",
            goal="< 50 ms",
            measured=f"paced {p99:.1f} ms; burst (all at once) {burst99:.0f} ms",
            met=p99 < 50,
            gap="" if p99 < 50 else f"{p99 / 50:.1f} x over (paced)",
        ),
    ]
    if m.reader_rtt:
        worst = max(percentile(v, 99) for v in m.reader_rtt.values()) * 1e3
        each = "; ".join(
            f"{p} {percentile(v, 99) * 1e3:.0f} ms ({len(v)} GETs)" for p, v in m.reader_rtt.items()
        )
        out.append(
            Target(
                name=f"reader p99 while {n}-agent bursts run ({label})",
                goal="< 250 ms (page and its data, report, /metrics)",
                measured=each,
                met=worst < 250,
                gap="" if worst < 250 else f"{worst / 250:.1f} x over",
            )
        )
    return out


def _row(n: int, label: str, m: Measured, http_rate: float, results_total: int) -> tuple[str, ...]:
    """One line of the ingest table: ``n`` agents over ``label``, as measured in ``m``."""
    rate = median(m.burst_rate)
    return (
        str(n),
        label,
        f"{rate:,.0f}",
        f"{rate / http_rate:.2f}",
        secs(median(m.burst_wall_s)),
        _p50_p99(m.burst_rtt),
        _p50_p99(m.paced_rtt),
        _p50_p99(m.register_rtt),
        f"{m.server_cpu_s / max(1, results_total) * 1e6:.1f} µs",
    )


def run_ingest(cfg: IngestConfig, log: Callable[[str], None]) -> Section:
    rows: list[tuple[str, ...]] = []
    targets: list[Target] = []
    for n in cfg.agents:
        ms = {t: asyncio.run(drive(n, t, cfg.repeats, cfg.paced_window_s, log)) for t in TRANSPORTS}
        rates = {t: median(m.burst_rate) for t, m in ms.items()}
        results_total = n * RESULTS_PER_BATCH * cfg.repeats
        for t, m in ms.items():
            rows.append(_row(n, LABEL[t], m, rates["http"], results_total))
        if n == max(cfg.agents):
            ratio = rates["mtls"] / rates["http"]
            targets.append(
                Target(
                    name=f"ingest over mutual TLS / plain HTTP ({n} agents, burst)",
                    goal="measured in one run (issue 11)",
                    measured=f"{ratio:.2f} ({rates['mtls']:,.0f} / {rates['http']:,.0f} results/s)",
                    met=True,
                )
            )
            for t in ("mtls", "http"):
                targets += _targets(n, LABEL[t], ms[t])
            churned = asyncio.run(drive(n, "mtls", cfg.repeats, cfg.paced_window_s, log, True))
            rate = median(churned.burst_rate)
            rows.append(_row(n, f"{LABEL['mtls']}, churn", churned, rates["http"], results_total))
            targets.append(
                Target(
                    name=f"ingest under churn / steady ({n} agents, burst, mutual TLS)",
                    goal="measured in one run (history's cost)",
                    measured=f"{rate / rates['mtls']:.2f} ({rate:,.0f} / {rates['mtls']:,.0f}"
                    " results/s)",
                    met=True,
                )
            )
    method = (
        "The real controller, `netcheck-controller serve` (as the lab starts it), in its own "
        "process on 127.0.0.1, SQLite file in a temp dir, once per transport in the same run: "
        "plain HTTP (`--insecure-http`, the shared bearer token) and mutual TLS (`--pki`, a CA "
        "from `pki.init_ca`, one EC P-256 client certificate per agent for its own role and "
        "host); reads open (`--open-reads`) on both. "
        f"N agents of role `{ROLE}` (one aiohttp ClientSession each, one kept-alive connection: "
        "over TLS its own SSL context, so one handshake per agent, at registration) register "
        "with the inventory's address, then post batches answering every check of the plan "
        f"the controller returned ({RESULTS_PER_BATCH} results) plus 1 listener state. "
        "Steady: a quarter of each plan's checks filtered, the same ones every round (a site "
        "as it mostly is; the targets). Churn (one more mutual-TLS run of the most agents): "
        "the filtered quarter moves by one check each round, so half the checks change state "
        "every round and every change is written to history in the same transaction. "
        f"Burst: all N post at once, {cfg.repeats} round(s), rate = results accepted / wall of "
        f'the round (median over rounds); "vs plain HTTP" is that rate over the plain-HTTP '
        f"one for the same N. Paced: one post per agent, spread evenly over "
        f"{cfg.paced_window_s:g} s. Round trips are client-side, request sent to JSON answer "
        "read. Server CPU is the controller process's user+system time over the burst rounds. "
        f"During the bursts one more client GETs {', '.join(READ_PATHS)} in turn without pause "
        "(reader p99: request sent to the last byte of the body as sent, gzip-compressed as a "
        "browser or Prometheus accepts it; the client's own decompression is logged apart), "
        "from a process of its own (as a browser or Prometheus is: not queued behind the "
        "agents' client-side work). The clients (and their TLS) share the 2 cores with the "
        "controller."
    )
    return Section(
        title="Controller ingest",
        method=method,
        headers=(
            "agents",
            "transport",
            "results/s (burst, median)",
            "vs plain HTTP",
            "burst round wall",
            "burst rtt p50 / p99 (ms)",
            "paced rtt p50 / p99 (ms)",
            "register rtt p50 / p99 (ms)",
            "server CPU per result",
        ),
        rows=tuple(rows),
        targets=tuple(targets),
    )
