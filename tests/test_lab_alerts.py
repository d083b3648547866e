"""The demo's alerts, for real: the lab's audit scenario (namespaces, nftables, controller,
agents, stand-ins), a real Prometheus in the controller's namespace scraping it over HTTPS
with the lab's CA and read token, and the shipped rules (their ``for`` set to 0 s, nothing
else changed) until they fire.

What issue 14 saw on this demo: the TLS expiry alert 59 times (stand-in certificates valid
7 days, one alert per port), NetcheckPortCheckFailing once per port with no host,
``netcheck_agent_dropped_results_total`` without samples. Here: no TLS alert, one
NetcheckPortCheckFailing per failing range and host pair (the ranges computed HERE from the
JSON report, independently of controller.ranges), each naming both hosts and where the
packets were stopped, and a dropped-results sample for every agent.

Run under ``flock /tmp/netcheck-netns.lock``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.lab import lab as labmod
from deploy.lab import procs, waits

REPO = Path(__file__).resolve().parents[1]
STATE = Path("/tmp/netcheck-lab-alerts")
PREFIX = "ncla-"
PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("nft") is None, reason="needs ip and nft"
    ),
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed"),
]


def prometheus_config(lab: labmod.Lab, work: Path) -> Path:
    """The shipped rules with every ``for`` at 0 s, and a scrape of the lab's controller as
    deploy/prometheus/prometheus.yml does it (HTTPS, the CA, the read token)."""
    rules = (REPO / "deploy" / "prometheus" / "netcheck.rules.yml").read_text()
    (work / "rules.yml").write_text(re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", rules))
    target = urllib.parse.urlsplit(lab.controller_url).netloc
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {
                "job_name": "netcheck-controller",
                "scheme": "https",
                "tls_config": {"ca_file": str(lab.ca_file)},
                "authorization": {"type": "Bearer", "credentials_file": str(lab.read_token_file)},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    path = work / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def query(lab: labmod.Lab, url: str, path: str) -> Any:
    status, body = waits.http_get(url + path, lab.ctl_netns, 5.0)
    assert status == 200, body[:500]
    return json.loads(body)["data"]


@pytest.fixture(scope="module")
def lab() -> Iterator[labmod.Lab]:
    with labmod.ready_session("audit", PREFIX, STATE, "netns") as running:
        yield running


@pytest.fixture(scope="module")
def fired(lab: labmod.Lab) -> dict[str, Any]:
    """The report, and the firing alerts once two evaluations in a row agree."""
    status, body = lab.get("/api/v1/report?format=json", 20.0)
    assert status == 200, body[:500]
    report = json.loads(body)
    work = lab.state / "prometheus"
    work.mkdir()
    config = prometheus_config(lab, work)
    listen = urllib.parse.urlsplit(lab.controller_url).hostname
    url = f"http://{listen}:9090"  # in the controller's namespace: nothing else there
    assert PROMETHEUS is not None
    cmd = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}"]
    cmd += [f"--web.listen-address={listen}:9090", "--log.level=warn"]
    proc = procs.start("prometheus", cmd, lab.ctl_netns, lab.state)
    try:
        deadline = time.monotonic() + 90
        last: list[str] = []
        alerts: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            time.sleep(2.0)
            try:
                alerts = [a for a in query(lab, url, "/api/v1/alerts")["alerts"]]
            except OSError:
                continue
            now = sorted(str(sorted(a["labels"].items())) for a in alerts if a["state"] == "firing")
            if now and now == last:
                break
            last = now
        dropped = query(lab, url, "/api/v1/query?query=netcheck_agent_dropped_results_total")
    finally:
        procs.stop(proc)
    log = (lab.state / "logs" / "prometheus.log").read_text(errors="replace")[-2000:]
    return {"report": report, "alerts": alerts, "dropped": dropped["result"], "log": log}


def firing(fired: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [
        a for a in fired["alerts"] if a["state"] == "firing" and a["labels"]["alertname"] == name
    ]


Run = tuple[str, str, str, str, int]  # interaction, src host, dst host, cause, first port


def ranges_of(checks: list[dict[str, Any]]) -> set[Run]:
    """Each run of failing checks with one cause and no other check of their pair between
    them (computed from the report alone)."""
    pairs: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for c in checks:
        pairs.setdefault((c["interaction"], c["src_host"], c["dst_host"]), []).append(c)
    out: set[Run] = set()
    for (inter, src, dst), cs in pairs.items():
        cause = None
        for c in sorted(cs, key=lambda c: c["port"]):
            now = c["cause"] if c["verdict"] == "fail" else None
            if now is not None and now != cause:
                out.add((str(inter), src, dst, now, c["port"]))
            cause = now
    return out


def test_no_tls_expiry_alert_on_stand_in_certificates(fired: dict[str, Any]) -> None:
    assert not firing(fired, "NetcheckTLSCertExpiringSoon"), fired["log"]
    assert not firing(fired, "NetcheckTLSCertExpiringCritical")


def test_one_alert_per_failing_range_and_host_pair(fired: dict[str, Any]) -> None:
    checks = fired["report"]["checks"]
    alerts = firing(fired, "NetcheckPortCheckFailing")
    assert alerts, fired["log"]
    got = {
        (a["labels"]["interaction"], a["labels"]["src_host"], a["labels"]["dst_host"],
         a["labels"]["cause"], int(re.split(r"\D", a["labels"]["ports"])[0]))
        for a in alerts
    }  # fmt: skip
    assert got == ranges_of(checks)
    assert len(alerts) < sum(c["verdict"] == "fail" for c in checks)
    # the interconnect's whole 6000-6010 is one alert per host pair, naming the hop
    nine = [
        a for a in alerts if a["labels"]["interaction"] == "9" and "6000" in a["labels"]["ports"]
    ]
    assert nine and all(a["labels"]["ports"] == "6000-6010" for a in nine), nine
    named = 0
    for a in alerts:
        lb, text = a["labels"], a["annotations"]["description"]
        assert f"from {lb['src_host']} ({lb['src_role']}, {lb['src_address']})" in text, text
        assert f"to {lb['dst_host']} ({lb['dst_role']}, {lb['dst_address']})" in text, text
        assert "Where: " in text, text
        # every device the report names for the range's checks is named by the alert
        ports = {int(p) for p in re.findall(r"\d+", lb["ports"])}
        rows = [
            c for c in checks
            if (str(c["interaction"]), c["src_host"], c["dst_host"], c["cause"])
            == (lb["interaction"], lb["src_host"], lb["dst_host"], lb["cause"])
            and c["verdict"] == "fail" and min(ports) <= c["port"] <= max(ports)
        ]  # fmt: skip
        assert rows, lb
        for c in rows:
            device = c["device"] or {}
            if device.get("address"):
                assert device["address"] in text, (text, device)
                named += 1
            n = device.get("hops")
            if n is not None:  # "(core-fw, hop 2)", or forged: "a device 1 hop from the source"
                assert re.search(rf"\bhop {n}\b|\b{n} hops?\b", text), (text, device)
    assert named, "no alert named a device"


def test_dropped_results_have_a_sample_per_agent(fired: dict[str, Any]) -> None:
    hosts = {s["metric"]["host"] for s in fired["dropped"]}
    agents = {a["host"] for a in fired["report"]["agents"]}
    assert agents and hosts == agents


def test_never_registered_alerts_match_the_report(fired: dict[str, Any]) -> None:
    never = {a["host"] for a in fired["report"]["never_registered"]}
    alerted = {a["labels"]["host"] for a in firing(fired, "NetcheckAgentNeverRegistered")}
    assert alerted == never
