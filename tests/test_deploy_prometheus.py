"""Prometheus files in deploy/prometheus: config, rules, and promtool unit tests of the rules."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from netcheck.agent.wire import (
    AgentRequest,
    OpenPort,
    PathMeasurement,
    RequestExchange,
    RequestReport,
    SweptHost,
)
from netcheck.controller.expand import by_source, expand
from netcheck.controller.exposure import ExposureCollector
from netcheck.controller.interconnect import (
    PathKey,
    PathPolicy,
    PathVerdict,
    Qualification,
    verdicts,
)
from netcheck.controller.inventory import load_inventory
from netcheck.controller.pathmetrics import path_families
from netcheck.controller.requests import RequestBook
from netcheck.controller.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
PROM = REPO / "deploy" / "prometheus"
RULES = PROM / "netcheck.rules.yml"
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")

METRIC = re.compile(r"\b(netcheck_[a-z_]+)\b")


def contract_metrics() -> set[str]:
    lines = (PROM / "metric_names.txt").read_text().splitlines()
    return {ln.split()[0] for ln in lines if ln.strip() and not ln.startswith("#")}


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def _installed(tmp_path: Path, with_credentials: bool) -> Path:
    """The shipped configuration copied as an operator installs it, with the CA made by the
    project's own `ca init` and a read token next to it (promtool opens both files)."""
    import shutil

    from netcheck.controller import pki

    etc = tmp_path / "prometheus"
    shutil.copytree(PROM, etc)
    if with_credentials:
        files = pki.init_ca(tmp_path / "pki", ["localhost"], ["127.0.0.1"])
        (etc / "netcheck").mkdir()
        shutil.copy(files.ca_cert, etc / "netcheck" / "ca.pem")
        token = etc / "netcheck" / "read-token"
        token.write_text("a-read-token\n")
        token.chmod(0o600)
    return etc


def test_controller_is_scraped_over_https_with_the_ca_and_the_read_token() -> None:
    doc = yaml.safe_load((PROM / "prometheus.yml").read_text())
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "netcheck-controller"]
    assert job["scheme"] == "https"
    assert job["tls_config"] == {"ca_file": "netcheck/ca.pem"}
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "netcheck/read-token"}


@needs_promtool
def test_config_is_valid(tmp_path: Path) -> None:
    out = promtool("check", "config", "prometheus.yml", cwd=_installed(tmp_path, True))
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_config_check_opens_the_credential_files(tmp_path: Path) -> None:
    out = promtool("check", "config", "prometheus.yml", cwd=_installed(tmp_path, False))
    assert out.returncode != 0
    assert "netcheck/read-token" in out.stdout + out.stderr


@needs_promtool
def test_rules_are_valid() -> None:
    out = promtool("check", "rules", RULES.name)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_rule_unit_tests_pass(test_file: Path) -> None:
    out = promtool("test", "rules", str(test_file.relative_to(PROM)))
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_rule_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests are not vacuous: a rule that pages on one lost probe fails them."""
    broken = RULES.read_text().replace("for: 15m", "for: 1m", 1)
    assert broken != RULES.read_text()
    (tmp_path / "tests").mkdir()
    (tmp_path / RULES.name).write_text(broken)
    target = tmp_path / "tests" / "checks_test.yml"
    shutil.copy(PROM / "tests" / "checks_test.yml", target)
    out = promtool("test", "rules", "tests/checks_test.yml", cwd=tmp_path)
    assert out.returncode != 0
    assert "NetcheckPortCheckFailing" in out.stdout + out.stderr


def test_every_alert_has_severity_summary_description() -> None:
    rules = alert_rules()
    assert len(rules) >= 5
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        for key in ("summary", "description"):
            assert "{{ $labels." in rule["annotations"][key], (rule["alert"], key)


def test_alerts_name_hosts_ranges_and_the_diagnosis() -> None:
    by_name = {r["alert"]: r for r in alert_rules()}
    failing = by_name["NetcheckPortCheckFailing"]
    text = failing["annotations"]["description"]
    for label in ("src_host", "src_role", "dst_host", "dst_role", "ports", "interaction", "cause"):
        assert f"$labels.{label}" in text, label
    for label in (".Labels.hop", ".Labels.seen_from"):  # read back from the diagnosis series
        assert label in text, label
    # The diagnosis labels are aggregated away: a sharper diagnosis keeps the alert's `for`.
    assert "sum by (" in failing["expr"] and "hop" not in failing["expr"]
    for name in ("NetcheckTLSCertExpiringSoon", "NetcheckTLSCertExpiringCritical"):
        tls = by_name[name]
        assert "$labels.dst_host" in tls["annotations"]["description"]
        assert "$labels.subject" in tls["annotations"]["description"]
        assert ".Labels.ports" in tls["annotations"]["description"]
        assert "min by (dst_role, dst_host, dst_address, subject)" in tls["expr"]
    never = by_name["NetcheckAgentNeverRegistered"]["annotations"]["description"]
    assert "$labels.host" in never and "$labels.address" in never


def test_the_series_bound_is_documented_where_it_is_enforced() -> None:
    from netcheck.controller.hostmetrics import SERIES_CAP

    bound = f"{SERIES_CAP:,}"
    assert f"{bound} series" in RULES.read_text()
    for doc in (REPO / "README.md", REPO / "deploy" / "README.md"):
        assert f"{bound} series" in doc.read_text(), doc


def test_every_alert_is_tested_firing_and_resolving() -> None:
    fired: set[str] = set()
    resolved: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        for case in doc["tests"]:
            for at in case.get("alert_rule_test", []):
                (fired if at.get("exp_alerts") else resolved).add(at["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names <= fired, f"never seen firing: {sorted(names - fired)}"
    assert names <= resolved, f"never seen resolved: {sorted(names - resolved)}"


def test_rules_use_only_contract_metrics() -> None:
    used = set(METRIC.findall(RULES.read_text()))
    assert used, "no netcheck_ metric in the rules"
    assert used <= contract_metrics(), sorted(used - contract_metrics())


def _exposition_series(collector: Collector, minutes: int) -> list[dict[str, str]]:
    """The collector's samples as promtool input series, each constant for `minutes`."""
    reg = CollectorRegistry()
    reg.register(collector)
    text = generate_latest(reg).decode()
    series = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            series.append({"series": f"{s.name}{{{labels}}}", "values": f"{s.value!r}x{minutes}"})
    return series


def _promtool_alert_test(tmp_path: Path, series: list[dict[str, str]], checks: list[Any]) -> str:
    """promtool test rules of the shipped rules on `series`; its output (asserted to pass)."""
    (tmp_path / RULES.name).write_text(RULES.read_text())
    test = {
        "rule_files": [RULES.name],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}],
    }
    (tmp_path / "chain_test.yml").write_text(yaml.safe_dump(test, width=1000))
    out = promtool("test", "rules", "chain_test.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


class _Paths(Collector):
    def __init__(self, paths: Sequence[PathVerdict]) -> None:
        self.paths = paths

    def collect(self) -> Iterator[Metric]:
        yield from path_families(self.paths)


@needs_promtool
def test_path_alerts_name_each_figure_and_its_threshold_from_the_controllers_metrics(
    tmp_path: Path,
) -> None:
    """The controller's own judgment (interconnect.verdicts) and families (pathmetrics) of a
    path beyond every threshold, scraped as they are exported: one alert per figure, each
    with the worst value and the threshold in the figure's unit, and a black-hole alert."""
    policy = PathPolicy(
        interaction=9, min_mtu=1400, max_rtt_ms=30, max_loss_percent=1, min_throughput_mbit=1000
    )
    keys = [PathKey(9, "prem_manager", h, "cloud_manager", "cm", 6000) for h in ("pm0", "pm1")]
    ms = {
        (9, "pm0", "cm"): PathMeasurement(9, "pm0", "cm", "a", 6000, 100.0, mtu=1300,
                                          black_hole=True, rtt_avg_s=0.05, loss=0.05,
                                          up_mbit_s=900.0, down_mbit_s=800.0),
        (9, "pm1", "cm"): PathMeasurement(9, "pm1", "cm", "a", 6000, 100.0, mtu=1500,
                                          rtt_avg_s=0.01, loss=0.0, up_mbit_s=2000.0,
                                          down_mbit_s=2000.0),
    }  # fmt: skip
    paths = verdicts(Qualification(paths=(policy,)), keys, ms, 100.0)
    assert [p.verdict for p in paths] == ["fail", "pass"]
    series = _exposition_series(_Paths(paths), 30)
    worst = {
        "mtu": "path MTU: 1300 bytes, under the minimum of 1400 bytes",
        "rtt": "round trip: 50ms, over the maximum of 30ms",
        "loss": "loss: 5%, over the maximum of 1%",
        "throughput_up": "throughput up: 900Mbit/s, under the minimum of 1Gbit/s",
        "throughput_down": "throughput down: 800Mbit/s, under the minimum of 1Gbit/s",
    }
    margins = {s["series"] for s in series if s["series"].startswith("netcheck_path_threshold")}
    assert len(margins) == len(worst), f"a figure the alert does not know: {sorted(margins)}"
    role_pair = {"interaction": "9", "src_role": "prem_manager", "dst_role": "cloud_manager"}
    report = (
        ' The netcheck report\'s "Interconnect qualification" section (GET '
        "/api/v1/report?format=markdown) names each host pair and how far it is from the "
        "threshold; the gate of every mode that needs the path counts it."
    )
    beyond = [
        {
            "exp_labels": {"severity": "warning", **role_pair, "figure": figure},
            "exp_annotations": {
                "summary": "Interconnect path of interaction 9 (prem_manager -> cloud_manager): "
                f"{figure} beyond its threshold",
                "description": "1 host pair(s) from prem_manager to cloud_manager of interaction "
                f"9 fail their qualification. Worst {text}.{report}",
            },
        }
        for figure, text in worst.items()
    ]
    hole = {
        "exp_labels": {"severity": "warning", **role_pair},
        "exp_annotations": {
            "summary": "MTU black hole on interaction 9 (prem_manager -> cloud_manager)",
            "description": "1 host pair(s) from prem_manager to cloud_manager of interaction 9 "
            "drop packets larger than 1300 bytes without sending ICMP fragmentation-needed "
            "back: large transfers stall while small packets pass. Clamp the TCP MSS on the "
            "interconnect or let ICMP fragmentation-needed through. The netcheck report's "
            '"Interconnect qualification" section names the host pairs.',
        },
    }
    _promtool_alert_test(
        tmp_path,
        series,
        [
            {"eval_time": "20m", "alertname": "NetcheckPathBeyondThreshold", "exp_alerts": beyond},
            {"eval_time": "20m", "alertname": "NetcheckPathMTUBlackHole", "exp_alerts": [hole]},
        ],
    )


@needs_promtool
def test_undocumented_port_alert_from_a_real_request_book(tmp_path: Path) -> None:
    """An exposure sweep ended in a real request book (SQLite, the agent's report checked as
    the API does) and the controller's ExposureCollector, scraped: one alert for the host
    pair with undocumented open ports, naming both hosts and their count; none for a pair
    swept clean or for the documented port."""
    spec = load_spec(REPO / "topology.yaml")
    inv = load_inventory(REPO / "inventory.example.yaml", spec)
    sources = by_source(expand(spec, inv))
    plan = sources[("pio", "pio-1")]
    dsts = sorted({(c.spec.dst_host, c.spec.dst_address) for c in plan})
    assert len(dsts) >= 2
    (dst, addr), (clean, clean_addr) = dsts[0], dsts[1]
    documented = next(c.spec.port for c in plan if c.spec.dst_host == dst)
    book = RequestBook.open(tmp_path / "netcheck.db", clock=lambda: 60.0)
    try:
        req = AgentRequest("r1", "exposure", "pio", "pio-1", 3600.0, (), 0.0)
        book.add([req], "test")
        swept = (
            SweptHost(dst, addr, 65535, "connect", 3.0, 65532),
            SweptHost(clean, clean_addr, 65535, "connect", 3.0, 65535),
        )
        ports = (
            OpenPort(dst, addr, documented),  # the spec lists it: not a finding
            OpenPort(dst, addr, 2222, "SSH-2.0-x"),
            OpenPort(dst, addr, 8081),
        )
        done = RequestReport("r1", "exposure", "done", 60.0, "ok", swept, ports)
        assert book.take(RequestExchange("pio", "pio-1", (done,)), plan, 60.0) == 1
        series = _exposition_series(ExposureCollector(book, lambda: sources), 10)
    finally:
        book.close()
    assert any(s["series"].startswith("netcheck_exposure_sweep_timestamp_seconds") for s in series)
    alert = {
        "exp_labels": {"severity": "warning", "src_host": "pio-1", "dst_host": dst},
        "exp_annotations": {
            "summary": f"2 undocumented TCP port(s) open from pio-1 to {dst}",
            "description": "The newest exposure sweep of the netcheck agent on pio-1 (ended "
            f"1970-01-01 00:01:00 +0000 UTC) found 2 TCP port(s) open on {dst} that the HDM "
            f"spec does not list for traffic from pio-1 to {dst}. The netcheck report's "
            'exposure audit lists them under "Close these" (GET /api/v1/report?format=markdown; '
            "JSON: exposure.close) with each port, the banner its service sent and the rule to "
            "request; close them, then run `netcheck-controller request exposure --host pio-1` "
            "again.",
        },
    }
    check = {"eval_time": "5m", "alertname": "NetcheckUndocumentedPortOpen"}
    _promtool_alert_test(tmp_path, series, [{**check, "exp_alerts": [alert]}])
