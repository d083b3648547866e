"""Metrics: the contract's names, values that follow the evaluation, promtool's approval."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from subprocess import PIPE, STDOUT
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from check_helpers import result_for
from prometheus_client.parser import text_string_to_metric_families

from netcheck.agent.wire import (
    ProbeResult,
    Registration,
    ResultBatch,
    ServiceCheck,
    encode,
)
from netcheck.controller.app import make_app
from netcheck.controller.appkeys import EVALUATION
from netcheck.controller.evaluate import evaluate
from netcheck.controller.expand import expand, expected
from netcheck.controller.inventory import load_inventory
from netcheck.controller.metrics import GATE_STATES, check_families
from netcheck.controller.model import AgentSeen, Observed
from netcheck.controller.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
TOKEN = "metrics-token-abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAMES = {
    "netcheck_checks",
    "netcheck_port_checks",
    "netcheck_interaction_up",
    "netcheck_gate_go",
    "netcheck_gate_state",
    "netcheck_gate_blocking_checks",
    "netcheck_agent_last_report_timestamp_seconds",
    "netcheck_agent_report_age_seconds",
    "netcheck_tls_cert_not_after_timestamp_seconds",
    "netcheck_results_ingested",
    "netcheck_batches_ingested",
    "netcheck_batches_rejected",
    "netcheck_agent_dropped_results",
    "netcheck_unexpected_results",
    "netcheck_failing_ports",
    "netcheck_tls_certificate_not_after_timestamp_seconds",
    "netcheck_agent_registered",
    "netcheck_metric_series_dropped",
}


async def test_metrics_follow_the_evaluation(tmp_path: Path) -> None:
    spec = load_spec(REPO / "topology.yaml")
    inv = load_inventory(REPO / "inventory.example.yaml", spec)
    now = time.time()
    results = []
    for c in expand(spec, inv):
        if c.src_host != "pio-1" or c.spec.interaction != 4:
            continue
        tls = (
            ServiceCheck("tls", "ok", tls_subject="CN=prem-mgr", tls_not_after=2e9)
            if c.spec.port >= 8000
            else None
        )
        results.append(
            ProbeResult(
                check_id=c.spec.check_id,
                interaction=4,
                src_host="pio-1",
                src_address=c.src_address,
                dst_host=c.spec.dst_host,
                dst_address=c.spec.dst_address,
                port=c.spec.port,
                state="filtered" if c.spec.port == 2376 else "open",
                mode="connect",
                attempts=1,
                started_at=now - 1,
                service_check=tls,
            )
        )
    stray = ProbeResult(
        "4:pio-1>prem-mgr:9", 4, "pio-1", "198.18.1.10", "prem-mgr", "198.18.1.30", 9, "open",
        "connect", 1, now - 1,
    )  # fmt: skip
    client = TestClient(TestServer(make_app(spec, inv, tmp_path / "m.sqlite", TOKEN)))
    await client.start_server()
    try:
        reg = Registration("pio", "pio-1", "198.18.1.10", "0.1", "connect")
        assert (await client.post("/api/v1/register", json=encode(reg), headers=AUTH)).ok
        b = ResultBatch("pio", "pio-1", results=(*results, stray), dropped=2)
        assert (await client.post("/api/v1/results", json=encode(b), headers=AUTH)).ok
        mgr = Registration("prem_manager", "prem-mgr", "198.18.1.30", "0.1", "connect")
        assert (await client.post("/api/v1/register", json=encode(mgr), headers=AUTH)).ok
        # /metrics may answer from the previous evaluation while the next one is computed
        # (stale while revalidating, bounded): scrape until it has seen the batch (its stray).
        for _ in range(100):
            r = await client.get("/metrics")
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await r.text()
            if "\nnetcheck_unexpected_results 1.0\n" in text and 'host="prem-mgr"' in text:
                break
            await asyncio.sleep(0.05)
        report = await (await client.get("/api/v1/report?format=json")).json()
    finally:
        await client.close()

    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(fams) >= NAMES

    def value(name: str, **labels: str) -> float:
        (s,) = [
            s for f in fams.values() for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]  # fmt: skip
        return s.value

    pair = {"interaction": "4", "src_role": "pio", "dst_role": "prem_manager"}
    assert value("netcheck_checks", verdict="pass", **pair) == 13  # 22, 443, 8000-8010
    assert value("netcheck_checks", verdict="fail", **pair) == 1
    assert value("netcheck_checks", verdict="unknown", **pair) == 0
    rev = {"interaction": "4", "src_role": "prem_manager", "dst_role": "pio"}
    assert value("netcheck_checks", verdict="unknown", **rev) == 1
    assert value("netcheck_port_checks", port="2376", verdict="fail", **pair) == 1
    assert value("netcheck_interaction_up", **pair) == 0
    five = {"interaction": "5", "src_role": "pio", "dst_role": "prem_esxi_manager"}
    assert value("netcheck_interaction_up", **five) == 0
    assert value("netcheck_gate_go", mode="deployment") == 0
    assert value("netcheck_gate_state", mode="deployment", state="no-go") == 1
    assert value("netcheck_gate_state", mode="deployment", state="go") == 0
    assert value("netcheck_gate_state", mode="deployment", state="undecided") == 0
    assert value("netcheck_gate_blocking_checks", mode="deployment") > 0
    # The earliest expiry over the hosts of the role (one prem_manager host here).
    cert = {"interaction": "4", "dst_role": "prem_manager", "port": "8003"}
    assert value("netcheck_tls_cert_not_after_timestamp_seconds", **cert) == 2e9
    # Host level: one series for the one certificate on eleven ports, one for the failing
    # port with both hosts and the cause, one per expected agent.
    host = {"dst_host": "prem-mgr", "dst_address": "198.18.1.30", "subject": "CN=prem-mgr"}
    cert_family = "netcheck_tls_certificate_not_after_timestamp_seconds"
    assert value(cert_family, ports="8000-8010", **host) == 2e9
    assert len(fams[cert_family].samples) == 1
    failing = fams["netcheck_failing_ports"].samples
    assert [(s.labels["ports"], s.value) for s in failing] == [("2376", 1.0)]
    assert failing[0].labels["cause"] == "dropped"
    assert failing[0].labels["src_host"] == "pio-1" and failing[0].labels["dst_host"] == "prem-mgr"
    assert value("netcheck_agent_registered", host="pio-1", role="pio") == 1
    assert value("netcheck_agent_registered", host="prem-mgr", role="prem_manager") == 1
    assert value("netcheck_agent_registered", host="cloud-cache", address="198.18.2.40") == 0
    roles = {s.labels["role"] for s in fams["netcheck_agent_registered"].samples}
    assert "pio" in roles and not roles & {"prem_esxi", "cloud_esxi"}  # ESXi runs no agent
    never = {a["host"] for a in report["never_registered"]}
    assert "cloud-cache" in never and not never & {"pio-1", "prem-mgr"}
    assert {s.value for s in fams["netcheck_metric_series_dropped"].samples} == {0.0}
    assert value("netcheck_results_ingested_total") == len(results) + 1
    assert value("netcheck_batches_ingested_total") == 1
    assert value("netcheck_batches_rejected_total", reason="size") == 0
    assert value("netcheck_agent_dropped_results_total", role="pio", host="pio-1") == 2
    # an agent that dropped nothing has its sample too (0), so the family is never empty
    assert value("netcheck_agent_dropped_results_total", host="prem-mgr") == 0
    assert value("netcheck_unexpected_results") == 1
    age = value("netcheck_agent_report_age_seconds", role="pio", host="pio-1")
    assert 0 <= age < 60

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed: the format was checked with the parser only")
    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(text.encode()), 30)
    assert proc.returncode == 0, out.decode()


async def test_the_evaluation_is_written_once_per_generation_and_sent_gzipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evaluation's families become text once per evaluation, by the background (primed),
    never in a scrape; a scraper that accepts gzip (Prometheus does) gets the same text
    compressed, with the agents' ages as of its own scrape."""
    import gzip

    from netcheck.controller import metrics

    # The evaluation of each text written (agent_last_report is called once per text): the
    # patch is module-wide, and an app of an earlier test may still be writing in a background
    # thread of this process; this app's evaluations all carry its fixed clock's time.
    written: list[float] = []
    real = metrics.agent_last_report

    def counted(ev: Any) -> Any:
        written.append(ev.generated_at)
        return real(ev)

    monkeypatch.setattr(metrics, "agent_last_report", counted)
    spec = load_spec(REPO / "topology.yaml")
    inv = load_inventory(REPO / "inventory.example.yaml", spec)
    now = [time.time()]

    def mine() -> int:
        return written.count(now[0])

    app = make_app(spec, inv, tmp_path / "m.sqlite", TOKEN, clock=lambda: now[0])
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        reg = Registration("pio", "pio-1", "198.18.1.10", "0.1", "connect")
        assert (await client.post("/api/v1/register", json=encode(reg), headers=AUTH)).ok
        plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in plain.headers
        text = await plain.text()
        zipped = await client.get(
            "/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
        )
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert zipped.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        unzipped = gzip.decompress(await zipped.read()).decode()
        cache = app[EVALUATION]
        assert cache.computed >= 1
        assert mine() == cache.computed  # once per generation (primed, then this one)
        for _ in range(3):
            assert (await client.get("/metrics")).status == 200
        assert mine() == cache.computed  # more scrapes, no new write: nothing new
    finally:
        await client.close()
    assert "netcheck_checks{" in text and "netcheck_results_ingested_total" in text
    # The same families in both (the age of the agent differs between the two scrapes).
    assert [f.name for f in text_string_to_metric_families(unzipped)] == [
        f.name for f in text_string_to_metric_families(text)
    ]


def test_gate_state_tells_go_no_go_and_undecided_apart() -> None:
    """Nothing tested: undecided (netcheck_gate_go 0 all the same); all open: go; one
    failing: no-go. Exactly one state series is 1 per mode."""
    spec = load_spec(REPO / "topology.yaml")
    inv = load_inventory(REPO / "inventory.example.yaml", spec)
    now = time.time()
    checks = expand(spec, inv)

    def gauges(failing: int | None, tested: bool = True) -> dict[tuple[str, ...], float]:
        results = tuple(
            result_for(c, "filtered" if i == failing else "open", started_at=now - 1)
            for i, c in enumerate(checks)
            if tested
        )
        agents = tuple(
            AgentSeen(role, h.name, h.address, "connect", "1", now)
            for role in spec.roles
            if spec.roles[role].agent
            for h in inv.of_role(role)
        )
        ev = evaluate(spec, expected(spec, inv), Observed(results, agents=agents), now)
        out: dict[tuple[str, ...], float] = {}
        for fam in check_families(spec, inv, ev):
            if fam.name in ("netcheck_gate_state", "netcheck_gate_go"):
                for smp in fam.samples:
                    out[(smp.name, *smp.labels.values())] = smp.value
        return out

    for got, want in (
        (gauges(None, tested=False), "undecided"),
        (gauges(None), "go"),
        (gauges(0), "no-go"),
    ):
        for mode in spec.modes:
            states = {st: got[("netcheck_gate_state", mode, st)] for st in GATE_STATES}
            assert states == {st: float(st == want) for st in GATE_STATES}, (mode, states)
            assert got[("netcheck_gate_go", mode)] == float(want == "go")
