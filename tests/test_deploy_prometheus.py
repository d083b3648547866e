"""Prometheus files in deploy/prometheus: config, rules, and promtool unit tests of the rules."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

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
