"""The deploy files against the real thing: a live controller and agent, their /metrics.

Network safety: the site is inventory.example.yaml moved from 198.18.0.0/15 onto loopback
(127.18.0.0/16), so every listener and probe stays on 127.0.0.0/8.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from port_helpers import free_port

REPO = Path(__file__).resolve().parent.parent
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
SYSTEM_PYTHON = Path("/usr/bin/python3")
METRIC = re.compile(r"\b(netcheck_[a-z_]+)\b")

pytestmark = pytest.mark.skipif(
    not (REPO / "controller" / "app.py").exists(), reason="controller.app is not there yet"
)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        body: bytes = resp.read()
        return body.decode()


def wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def families(text: str) -> set[str]:
    """Metric family names declared in a Prometheus text exposition."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            names.add(name)
            names.add(name + "_total")
    return names


def contract(source: str) -> set[str]:
    lines = (REPO / "deploy" / "prometheus" / "metric_names.txt").read_text().splitlines()
    rows = [ln.split() for ln in lines if ln.strip() and not ln.startswith("#")]
    return {name for name, _type, src in rows if src == source}


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )


@dataclass(frozen=True)
class Site:
    url: str
    token_file: Path
    workdir: Path


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    workdir = Path(tempfile.mkdtemp(prefix="netcheck-live-"))
    workdir.chmod(0o755)
    inventory = workdir / "inventory.yaml"
    text = (REPO / "inventory.example.yaml").read_text()
    inventory.write_text(text.replace("198.18.", "127.18."))
    token = secrets.token_hex(16)
    token_file = workdir / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o644)  # the unprivileged single-file agent reads it too
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "netcheck.controller", "serve", "--topology", "topology.yaml"]
    cmd += ["--inventory", str(inventory), "--listen", f"127.0.0.1:{port}"]
    cmd += ["--db", str(workdir / "netcheck.db"), "--token-file", str(token_file)]
    cmd += ["--insecure-http", "--open-reads"]  # the lab path: one shared token, open reads
    log = (workdir / "controller.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(url + "/healthz", proc)
        agent = [sys.executable, "-m", "netcheck.agent", "serve", "--controller", url, "--once"]
        agent += ["--token-file", str(token_file), "--role", "pio", "--host", "pio-1"]
        agent += ["--address", "127.18.1.10", "--mode", "connect"]
        done = subprocess.run(agent, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        yield Site(url, token_file, workdir)
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(workdir)


def dashboard_and_rule_metrics() -> set[str]:
    rules = (REPO / "deploy" / "prometheus" / "netcheck.rules.yml").read_text()
    board = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "netcheck.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    return set(METRIC.findall(rules)) | set(METRIC.findall("\n".join(exprs)))


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_controller_metrics_pass_promtool(site: Site) -> None:
    text = get(site.url + "/metrics")
    assert 'netcheck_agent_last_report_timestamp_seconds{host="pio-1",role="pio"}' in text
    out = promtool_check_metrics(text)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_controller_metric_of_the_contract_is_live(site: Site) -> None:
    live = families(get(site.url + "/metrics"))
    assert contract("controller") <= live, sorted(contract("controller") - live)


def test_rules_and_dashboard_use_only_live_metrics(site: Site) -> None:
    live = families(get(site.url + "/metrics")) | contract("agent")
    used = dashboard_and_rule_metrics()
    assert used <= live, sorted(used - live)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_agent_metrics_are_live_and_valid(site: Site) -> None:
    health = free_port()
    cmd = [sys.executable, "-m", "netcheck.agent", "serve", "--controller", site.url]
    cmd += ["--token-file", str(site.token_file), "--role", "prem_manager", "--host", "prem-mgr"]
    cmd += ["--address", "127.18.1.30", "--mode", "connect"]
    cmd += ["--health-listen", f"127.0.0.1:{health}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{health}/metrics", proc)
        text = get(f"http://127.0.0.1:{health}/metrics")
    finally:
        stop(proc)
    assert contract("agent") <= families(text), sorted(contract("agent") - families(text))
    out = promtool_check_metrics(text)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no /usr/bin/python3")
def test_single_file_agent_serves_without_site_packages(site: Site) -> None:
    """The single-file agent registers and reports under `python3 -I -S`, unprivileged."""
    from test_deploy_zipapp import _load_build_script

    zipapp_build = _load_build_script()

    pyz: Path = zipapp_build.build(site.workdir / "netcheck-agent-serve.pyz")
    pyz.chmod(0o644)
    cmd = [str(SYSTEM_PYTHON), "-I", "-S", str(pyz), "serve", "--controller", site.url]
    cmd += ["--token-file", str(site.token_file), "--role", "cloud_cache"]
    cmd += ["--host", "cloud-cache", "--address", "127.18.2.40", "--once"]
    drop = os.geteuid() == 0
    done = subprocess.run(
        cmd,
        cwd=site.workdir,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        check=False,
        user=65534 if drop else None,
        group=65534 if drop else None,
        extra_groups=[] if drop else None,
    )
    assert done.returncode == 0, done.stderr
    assert "no CAP_NET_RAW: connect probes" in done.stderr
    text = get(site.url + "/metrics")
    line = 'netcheck_agent_last_report_timestamp_seconds{host="cloud-cache",role="cloud_cache"}'
    assert line in text
    report = json.loads(get(site.url + "/api/v1/report?format=json"))
    states = {ls["port"]: ls["state"] for ls in report["listeners"]["cloud-cache"]}
    # Held through the --once round, then released at exit: the last report says "closed".
    assert states and all(state == "closed" for port, state in states.items() if port > 1024)
    if drop:  # an unprivileged agent cannot hold ports below 1024, and says so
        assert all(state == "denied" for port, state in states.items() if port < 1024)


def alerts(url: str) -> list[dict[str, Any]]:
    body = json.loads(get(url + "/api/v1/alerts"))
    found: list[dict[str, Any]] = body["data"]["alerts"]
    return found


def pio_failing(site: Site) -> list[dict[str, Any]]:
    """pio-1's failing checks in the report, once it shows them (it may answer from the
    evaluation before the agent's batch for a moment)."""
    deadline = time.monotonic() + 20
    while True:
        report = json.loads(get(site.url + "/api/v1/report?format=json"))
        checks = [c for c in report["checks"] if c["src_host"] == "pio-1"]
        if all(c["cause"] != "not_tested" for c in checks) or time.monotonic() > deadline:
            return [c for c in checks if c["verdict"] == "fail"]
        time.sleep(0.2)


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")
def test_prometheus_scraping_the_controller_fires_alerts_that_name_hosts(site: Site) -> None:
    """A real Prometheus scrapes the live controller over loopback and evaluates the shipped
    rules (their `for` set to 0 s, nothing else changed) until the alerts fire: one per failing
    range of pio-1's, fewer than its failing checks, each naming both hosts and where it was
    stopped (the template's query against the real series), and one for an agent the
    inventory expects that never registered (cloud-mgr)."""
    work = site.workdir / "prometheus"
    work.mkdir()
    rules = (REPO / "deploy" / "prometheus" / "netcheck.rules.yml").read_text()
    (work / "rules.yml").write_text(re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", rules))
    target = site.url.removeprefix("http://")
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [rules.yml]\n"
        "scrape_configs:\n"
        "  - job_name: netcheck-controller\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    assert PROMETHEUS is not None
    cmd = [PROMETHEUS, "--config.file=prometheus.yml", f"--storage.tsdb.path={work / 'data'}"]
    cmd += [f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    failing = pio_failing(site)
    assert len(failing) > 1
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(url + "/-/ready", proc, 30)
        deadline = time.monotonic() + 60
        firing: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            firing = [a for a in alerts(url) if a["state"] == "firing"]
            names = {a["labels"]["alertname"] for a in firing}
            if {"NetcheckPortCheckFailing", "NetcheckAgentNeverRegistered"} <= names:
                break
            time.sleep(0.5)
    finally:
        stop(proc)
        log.close()
    by_name: dict[str, list[dict[str, Any]]] = {}
    for a in firing:
        by_name.setdefault(a["labels"]["alertname"], []).append(a)
    ranges = [
        a for a in by_name.get("NetcheckPortCheckFailing", []) if a["labels"]["src_host"] == "pio-1"
    ]
    assert ranges, (work / "prometheus.log").read_text()[-2000:]
    assert len(ranges) < len(failing)  # one per range, not one per port
    for a in ranges:
        labels, text = a["labels"], a["annotations"]["description"]
        assert labels["dst_host"] and labels["ports"] and labels["cause"], labels
        assert f"from pio-1 (pio, {labels['src_address']}) to {labels['dst_host']}" in text
        assert "Where: " in text, text  # read back from the diagnosis series by the query
    vc = [a for a in ranges if a["labels"]["dst_host"] == "prem-vc"]
    assert vc and vc[0]["labels"]["ports"] == "443", ranges
    never = {a["labels"]["host"] for a in by_name.get("NetcheckAgentNeverRegistered", [])}
    assert "cloud-mgr" in never and "pio-1" not in never
