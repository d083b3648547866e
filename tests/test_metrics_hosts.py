"""Host-level metrics: failing ranges per host pair, TLS certificates, expected agents, and
the bound on each family (controller.hostmetrics, controller.ranges, controller.awaited)."""

from __future__ import annotations

import time
from pathlib import Path

from check_helpers import result_for
from prometheus_client.core import Metric

from netcheck.agent.wire import ProbeResult, ProbeState, ServiceCheck
from netcheck.controller.awaited import never_registered
from netcheck.controller.evaluate import evaluate
from netcheck.controller.expand import expected
from netcheck.controller.hostmetrics import CAPPED, SERIES_CAP, host_families
from netcheck.controller.inventory import Inventory, load_inventory
from netcheck.controller.metrics import counter_families
from netcheck.controller.model import AgentSeen, Evaluation, Observed
from netcheck.controller.ranges import failing_ranges
from netcheck.controller.render.json_report import report_dict
from netcheck.controller.spec import Spec, load_spec

REPO = Path(__file__).resolve().parent.parent
NOW = time.time()
HOP = "198.18.1.1"


def site() -> tuple[Spec, Inventory]:
    spec = load_spec(REPO / "topology.yaml")
    return spec, load_inventory(REPO / "inventory.example.yaml", spec)


def pio_to_manager(states: dict[int, ProbeState], **fields: object) -> Evaluation:
    """Interaction 4 from pio-1 to prem-mgr (22, 443, 2376, 8000-8010) with these states
    (others open); only pio-1's agent registered."""
    spec, inv = site()
    exp = expected(spec, inv)
    results = []
    for c in exp.checks:
        if c.src_host == "pio-1" and c.spec.interaction == 4:
            state = states.get(c.spec.port, "open")
            extra = fields if state == "filtered" else {}
            results.append(result_for(c, state, started_at=NOW - 1, **extra))
    agents = (AgentSeen("pio", "pio-1", "198.18.1.10", "connect", "1", NOW),)
    return evaluate(spec, exp, Observed(tuple(results), agents=agents), NOW)


def samples(fams: list[Metric], name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for f in fams if f.name == name for s in f.samples]


def test_a_blocked_range_is_one_series_naming_the_hosts_and_the_hop() -> None:
    """22 dropped, 443 open, 2376 and 8000-8010 dropped: two ranges (443 passes between),
    each naming both hosts, the cause and the last hop that answered."""
    dropped = dict.fromkeys([22, 2376, *range(8000, 8011)], "filtered")
    ev = pio_to_manager(dropped, last_hop=HOP, last_hop_hops=1)  # type: ignore[arg-type]
    spec, _ = site()
    got = samples(list(host_families(spec, ev)), "netcheck_failing_ports")
    assert sorted((lb["ports"], v) for lb, v in got) == [("22", 1.0), ("2376, 8000-8010", 12.0)]
    for labels, _ in got:
        assert labels["interaction"] == "4"
        assert (labels["src_host"], labels["src_address"]) == ("pio-1", "198.18.1.10")
        assert (labels["dst_host"], labels["dst_address"]) == ("prem-mgr", "198.18.1.30")
        assert (labels["src_role"], labels["dst_role"]) == ("pio", "prem_manager")
        assert labels["cause"] == "dropped"
        assert labels["hop"] == f"At or just past {HOP} (hop 1)"
        assert labels["side"] == "" and labels["seen_from"] == ""


def test_a_range_splits_on_another_cause_and_passing_ports_make_none() -> None:
    states: dict[int, ProbeState] = {8000: "filtered", 8001: "filtered", 8002: "refused"}
    ranges = failing_ranges(pio_to_manager(states).rows)
    assert [(r.ports, r.cause) for r in ranges] == [
        ("8000-8001", "dropped"),
        ("8002", "refused"),
    ]
    assert failing_ranges(pio_to_manager({}).rows) == []


def test_each_family_is_cut_at_its_bound_and_says_how_many_it_left_out() -> None:
    states: dict[int, ProbeState] = {
        p: ("filtered" if p % 2 else "refused") for p in range(8000, 8011)
    }
    ev = pio_to_manager(states)
    spec, _ = site()
    full = list(host_families(spec, ev))
    assert len(samples(full, "netcheck_failing_ports")) == 11
    assert {lb["family"]: v for lb, v in samples(full, "netcheck_metric_series_dropped")} == {
        name: 0.0 for name in CAPPED
    }
    cut = list(host_families(spec, ev, cap=4))
    kept = samples(cut, "netcheck_failing_ports")
    assert [lb["ports"] for lb, _ in kept] == ["8000", "8001", "8002", "8003"]  # in order
    left = {lb["family"]: v for lb, v in samples(cut, "netcheck_metric_series_dropped")}
    assert left["netcheck_failing_ports"] == 7
    registered = samples(cut, "netcheck_agent_registered")
    assert len(registered) == 4 and all(v == 0 for _, v in registered)  # never-registered first
    assert left["netcheck_agent_registered"] == len(never_registered(spec, ev)) + 1 - 4
    assert SERIES_CAP >= 1000


def test_one_tls_series_per_certificate_not_per_port() -> None:
    spec, inv = site()
    exp = expected(spec, inv)
    same = ServiceCheck("tls", "ok", tls_subject="CN=prem-mgr", tls_not_after=NOW + 7 * 86400)
    other = ServiceCheck("tls", "ok", tls_subject="CN=prem-mgr", tls_not_after=NOW + 400 * 86400)
    results: list[ProbeResult] = []
    for c in exp.checks:
        if c.src_host == "pio-1" and c.spec.interaction == 4 and c.spec.port >= 443:
            sc = other if c.spec.port == 443 else same
            results.append(result_for(c, started_at=NOW - 1, service_check=sc))
    ev = evaluate(spec, exp, Observed(tuple(results)), NOW)
    got = samples(
        list(host_families(spec, ev)), "netcheck_tls_certificate_not_after_timestamp_seconds"
    )
    assert [(lb["ports"], v) for lb, v in got] == [
        ("2376, 8000-8010", NOW + 7 * 86400),  # the soonest first
        ("443", NOW + 400 * 86400),
    ]
    for labels, _ in got:
        assert labels == {**labels, "dst_role": "prem_manager", "dst_host": "prem-mgr"}
        assert labels["dst_address"] == "198.18.1.30" and labels["subject"] == "CN=prem-mgr"


def test_every_expected_agent_has_a_series_and_the_report_lists_those_never_registered() -> None:
    spec, inv = site()
    ev = pio_to_manager({})
    got = {lb["host"]: (lb["role"], lb["address"], v) for lb, v in samples(
        list(host_families(spec, ev)), "netcheck_agent_registered"
    )}  # fmt: skip
    agent_hosts = {h.name for r, role in spec.roles.items() if role.agent for h in inv.of_role(r)}
    assert set(got) == agent_hosts  # no ESXi (it runs no agent)
    assert got["pio-1"] == ("pio", "198.18.1.10", 1.0)
    assert got["prem-mgr"] == ("prem_manager", "198.18.1.30", 0.0)
    report = report_dict(spec, ev, ())
    listed = {a["host"]: a for a in report["never_registered"]}
    assert set(listed) == agent_hosts - {"pio-1"}
    assert listed["cloud-cache"] == {
        "role": "cloud_cache",
        "host": "cloud-cache",
        "address": "198.18.2.40",
    }


def test_dropped_results_have_a_sample_for_every_registered_agent() -> None:
    agents = (
        AgentSeen("pio", "pio-1", "198.18.1.10", "connect", "1", NOW),
        AgentSeen("prem_manager", "prem-mgr", "198.18.1.30", "connect", "1", NOW),
    )
    fams = list(counter_families({"dropped:pio:pio-1": 5.0}, agents))
    got = {lb["host"]: v for lb, v in samples(fams, "netcheck_agent_dropped_results")}
    assert got == {"pio-1": 5.0, "prem-mgr": 0.0}
