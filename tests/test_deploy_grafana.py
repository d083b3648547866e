"""The provisioned Grafana dashboard in deploy/grafana: well-formed and on the metric contract."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "netcheck.json"
METRIC = re.compile(r"\b(netcheck_[a-z_]+)\b")
PROMTOOL = shutil.which("promtool")


def contract_metrics() -> set[str]:
    lines = (REPO / "deploy" / "prometheus" / "metric_names.txt").read_text().splitlines()
    return {ln.split()[0] for ln in lines if ln.strip() and not ln.startswith("#")}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def query_panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in d["panels"]:
        if p["type"] != "row":
            yield p
        yield from (q for q in p.get("panels", []) if q["type"] != "row")


def queries(d: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in query_panels(d) for t in p["targets"]]


def test_stable_uid_and_datasource_variable() -> None:
    d = dashboard()
    assert d["uid"] == "netcheck-overview"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in query_panels(d):
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}"


def test_panels_cover_the_issue() -> None:
    """Pass/fail per interaction, failing ranges per host pair, gate per mode, agent
    freshness, agents never registered, TLS expiry per certificate, undocumented open ports
    per host pair."""
    exprs = "\n".join(queries(dashboard()))
    for metric in (
        "netcheck_checks",
        "netcheck_interaction_up",
        "netcheck_failing_ports",
        "netcheck_gate_state",
        "netcheck_gate_blocking_checks",
        "netcheck_agent_report_age_seconds",
        "netcheck_agent_registered",
        "netcheck_tls_certificate_not_after_timestamp_seconds",
        "netcheck_exposure_open_ports",
    ):
        assert re.search(rf"\b{metric}\b", exprs), metric


def test_every_metric_is_in_the_contract() -> None:
    d = dashboard()
    used = set(METRIC.findall("\n".join(queries(d))))
    for v in d["templating"]["list"]:
        used |= set(METRIC.findall(v.get("definition", "")))
    assert used <= contract_metrics(), sorted(used - contract_metrics())


def test_layout_ids_and_ref_ids() -> None:
    d = dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        xs = range(g["x"], g["x"] + g["w"])
        mine = {(x, y) for x in xs for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
    for p in query_panels(d):
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel query, with the dashboard variables filled in, parses as PromQL."""
    fill = {"$interaction": ".*", "$mode": ".*", "$__rate_interval": "5m"}
    rules = []
    for i, expr in enumerate(queries(dashboard())):
        for var, value in fill.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"netcheck:dashboard_query_{i}", "expr": expr})
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert PROMTOOL is not None
    out = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_gate_panel_tells_go_no_go_and_undecided_apart(tmp_path: Path) -> None:
    """The gate panel's query, run by promtool on one mode per state, gives the values its
    mappings name GO, NO-GO and UNDECIDED (netcheck_gate_go alone is 0 for both of the last)."""
    (panel,) = [p for p in query_panels(dashboard()) if p["title"] == "Gate per migration mode"]
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    texts = {k: v["text"] for k, v in mapping["options"].items()}
    assert texts == {"1": "GO", "-1": "NO-GO", "0": "UNDECIDED"}
    (target,) = panel["targets"]
    expr = target["expr"].replace("$mode", ".*")
    series = []
    for mode, current in (("a", "go"), ("b", "no-go"), ("c", "undecided")):
        for state in ("go", "no-go", "undecided"):
            series.append(
                {
                    "series": f'netcheck_gate_state{{mode="{mode}",state="{state}"}}',
                    "values": "1" if state == current else "0",
                }
            )
    want = {"a": "1", "b": "-1", "c": "0"}
    test = {
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "0m",
                        "exp_samples": [
                            {"labels": f'{{mode="{m}"}}', "value": float(v)}
                            for m, v in want.items()
                        ],
                    }
                ],
            }
        ]
    }
    assert {texts[v] for v in want.values()} == {"GO", "NO-GO", "UNDECIDED"}
    path = tmp_path / "gate_panel_test.yml"
    path.write_text(yaml.safe_dump(test))
    assert PROMTOOL is not None
    out = subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def run_panel(tmp_path: Path, title: str, series: dict[str, str], want: list[str]) -> None:
    """promtool runs the panel's (first) query at 10m on ``series`` (series -> values): it
    must give exactly the label sets ``want``."""
    (panel,) = [p for p in query_panels(dashboard()) if p["title"] == title]
    expr = panel["targets"][0]["expr"].replace("$interaction", ".*")
    test = {
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": k, "values": v} for k, v in series.items()],
                "promql_expr_test": [
                    {
                        "expr": f"count by ({', '.join(_labels(want[0]))}) ({expr})",
                        "eval_time": "10m",
                        "exp_samples": [{"labels": w, "value": 1} for w in want],
                    }
                ],
            }
        ]
    }
    path = tmp_path / "panel_test.yml"
    path.write_text(yaml.safe_dump(test))
    assert PROMTOOL is not None
    out = subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _labels(selector: str) -> list[str]:
    return re.findall(r"(\w+)=", selector)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_failing_ranges_panel_names_host_pairs_and_the_hop(tmp_path: Path) -> None:
    pair = 'interaction="4",src_host="pio-1",dst_host="prem-mgr"'
    hop = "In the network: at or just past 198.18.1.1 (hop 1)"
    name = "netcheck_failing_ports"
    run_panel(
        tmp_path,
        "Failing ranges per host pair",
        {
            f'{name}{{{pair},ports="8000-8010",cause="dropped",hop="{hop}"}}': "11x10",
            f'{name}{{{pair},ports="22",cause="rejected",hop="{hop}"}}': "1x10",
        },
        [
            f'{{{pair},ports="8000-8010",cause="dropped",hop="{hop}"}}',
            f'{{{pair},ports="22",cause="rejected",hop="{hop}"}}',
        ],
    )


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_never_registered_panel_lists_only_agents_that_never_registered(tmp_path: Path) -> None:
    name = "netcheck_agent_registered"
    run_panel(
        tmp_path,
        "Expected agents that never registered",
        {
            name + '{role="pio",host="pio-1",address="198.18.1.10"}': "1x10",
            name + '{role="cloud_cache",host="cloud-cache",address="198.18.2.40"}': "0x10",
        },
        ['{role="cloud_cache",host="cloud-cache",address="198.18.2.40"}'],
    )


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_tls_panel_has_one_row_per_certificate(tmp_path: Path) -> None:
    cert = 'dst_role="prem_manager",dst_host="prem-mgr",subject="CN=prem-mgr"'
    name = "netcheck_tls_certificate_not_after_timestamp_seconds"
    run_panel(
        tmp_path,
        "TLS certificates (time to expiry), one row per certificate",
        {
            f'{name}{{{cert},ports="2376, 8000-8010"}}': "9e8x10",
            f'{name}{{{cert},ports="443"}}': "2e9x10",
        },
        [f'{{{cert},ports="2376, 8000-8010"}}', f'{{{cert},ports="443"}}'],
    )


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_exposure_panel_lists_only_host_pairs_with_undocumented_open_ports(
    tmp_path: Path,
) -> None:
    name = "netcheck_exposure_open_ports"
    run_panel(
        tmp_path,
        "Undocumented open ports per host pair",
        {
            name + '{src_host="pio-1",dst_host="prem-mgr"}': "2x10",
            name + '{src_host="pio-1",dst_host="cloud-mgr"}': "0x10",  # swept clean
            name + '{src_host="prem-mgr",dst_host="cloud-mgr"}': "1x10",
        },
        ['{src_host="pio-1",dst_host="prem-mgr"}', '{src_host="prem-mgr",dst_host="cloud-mgr"}'],
    )


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_exposure_sweeps_panel_has_one_row_per_source(tmp_path: Path) -> None:
    name = "netcheck_exposure_sweep_timestamp_seconds"
    run_panel(
        tmp_path,
        "Exposure sweeps (time since each source's newest sweep ended)",
        {name + '{src_host="pio-1"}': "60x10", name + '{src_host="prem-mgr"}': "0x10"},
        ['{src_host="pio-1"}', '{src_host="prem-mgr"}'],
    )


def test_provisioning_files() -> None:
    prov = GRAFANA / "provisioning"
    dashboards = yaml.safe_load((prov / "dashboards" / "netcheck.yml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    sources = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())
    assert [s["type"] for s in sources["datasources"]] == ["prometheus"]
