"""End to end: the whole lab per shipped scenario, checked against the scenario file.

For every shipped scenario the lab comes up (namespaces, nftables, controller, agents,
stand-ins), one probe round runs, and the controller's JSON report must agree check by
check with a verdict computed HERE, independently of the product's code, from the raw
scenario file, the raw topology.yaml and the generated inventory. Where nmap is installed,
the agent's port states from two sources are cross-checked against ``nmap -sT``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.lab import lab as labmod
from deploy.lab.scenario import shipped

REPO = Path(__file__).resolve().parents[1]
STATE = Path("/tmp/netcheck-lab-e2e")
PREFIX = "ncle-"  # not "nclab-": a test run never tears down a demo running next to it

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("nft") is None, reason="needs ip and nft"
    ),
]

Key = tuple[int, str, str, int]  # interaction, src host, dst host, port


# --- the expected verdicts, from the raw files only ------------------------------------


def _ports(text: object) -> set[int]:
    out: set[int] = set()
    for part in str(text).split(","):
        lo, _, hi = part.strip().partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def expected_checks(topology: dict[str, Any], hosts: dict[str, list[str]]) -> dict[Key, str]:
    """Every (interaction, src host, dst host, port) the spec asks for -> the listening role."""
    out: dict[Key, str] = {}
    for inter in topology["interactions"]:
        for flow in inter["flows"]:
            src, dst = inter["source"], inter["destination"]
            if flow.get("direction", "forward") == "reverse":
                src, dst = dst, src
            for s in hosts.get(src, []):
                for d in hosts.get(dst, []):
                    for port in _ports(flow["ports"]):
                        out[(inter["id"], s, d, port)] = f"{src}>{dst}"
    return out


def blocking_rule(
    rules: list[dict[str, Any]], key: Key, src_role: str, dst_role: str
) -> dict[str, Any] | None:
    inter, src_host, dst_host, port = key
    for rule in rules:  # nftables: the first matching rule decides
        if rule.get("interaction") not in (None, inter):
            continue
        if rule.get("src") not in (None, src_role) or rule.get("dst") not in (None, dst_role):
            continue
        if rule.get("src_host") not in (None, src_host):
            continue
        if rule.get("dst_host") not in (None, dst_host):
            continue
        if "ports" in rule and port not in _ports(rule["ports"]):
            continue
        return rule
    return None


def expectation(
    rules: list[dict[str, Any]], key: Key, pair: str, agent_roles: set[str]
) -> tuple[str, set[str]]:
    """(verdict, acceptable causes) for one check."""
    src_role, dst_role = pair.split(">")
    rule = blocking_rule(rules, key, src_role, dst_role)
    if rule is None:
        return "pass", {"ok"}
    if rule["action"] == "drop":
        return "fail", {"dropped"}
    if rule["action"] == "prohibit":
        return "fail", {"prohibited"}
    # a reset while the destination listens: only an agent there can prove it listened
    return "fail", {"rejected"} if dst_role in agent_roles else {"rejected", "refused"}


# --- the lab ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=shipped())
def lab(request: pytest.FixtureRequest) -> Iterator[labmod.Lab]:
    from netcheck.controller.spec import load_spec

    running: labmod.Lab | None = None
    try:
        running = labmod.up(request.param, "netns", state=STATE, prefix=PREFIX)
        spec = load_spec(REPO / "topology.yaml")
        assert running.wait_listening(spec, 20.0) == []
        since = time.time()
        assert running.wait_round(since, 6.0, 3 * labmod.LAB_PERIOD_S + 20) == []
        yield running
    finally:
        labmod.down(STATE, PREFIX)


@pytest.fixture(scope="module")
def report(lab: labmod.Lab) -> dict[str, Any]:
    status, body = lab.get("/api/v1/report?format=json", 20.0)
    assert status == 200, body[:500]
    data: dict[str, Any] = json.loads(body)
    return data


def _raw(lab: labmod.Lab) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[str]]]:
    topology = yaml.safe_load((REPO / "topology.yaml").read_text())
    scen = yaml.safe_load((REPO / "deploy/lab/scenarios" / f"{lab.scenario}.yaml").read_text())
    inv = yaml.safe_load((lab.state / "inventory.yaml").read_text())
    hosts = {role: [h["name"] for h in hs] for role, hs in inv["hosts"].items()}
    return topology, scen.get("rules") or [], hosts


def test_every_check_agrees_with_the_scenario(lab: labmod.Lab, report: dict[str, Any]) -> None:
    topology, rules, hosts = _raw(lab)
    agent_roles = {name for name, r in topology["roles"].items() if r["agent"]}
    wanted = expected_checks(topology, hosts)
    got = {(c["interaction"], c["src_host"], c["dst_host"], c["port"]): c for c in report["checks"]}
    assert set(got) == set(wanted)
    wrong = []
    for key, pair in sorted(wanted.items()):
        verdict, causes = expectation(rules, key, pair, agent_roles)
        c = got[key]
        if c["verdict"] != verdict or c["cause"] not in causes:
            wrong.append(f"{key}: want {verdict}/{sorted(causes)}, got {c['verdict']}/"
                         f"{c['cause']} ({c['diagnosis']})")  # fmt: skip
    assert wrong == [], "\n".join(wrong[:30])
    if rules:
        assert report["summary"]["failed"] > 0
    else:
        assert report["summary"]["failed"] == 0 and report["summary"]["unknown"] == 0


def test_gates_follow_the_failing_checks(lab: labmod.Lab, report: dict[str, Any]) -> None:
    topology, rules, hosts = _raw(lab)
    agent_roles = {name for name, r in topology["roles"].items() if r["agent"]}
    wanted = expected_checks(topology, hosts)
    failing = {
        key[0] for key, pair in wanted.items() if expectation(rules, key, pair, agent_roles)[0]
        == "fail"
    }  # fmt: skip
    for mode, m in topology["modes"].items():
        status, body = lab.get(f"/api/v1/gate?mode={mode}")
        assert status == 200
        decision = json.loads(body)
        go = not failing & set(m["interactions"])
        assert decision["decision"] == ("go" if go else "no-go"), (mode, decision["reasons"])
        assert bool(decision["blocking"]) != go


NMAP_STATE = {"open": {"open"}, "closed": {"refused"}, "filtered": {"filtered", "prohibited"}}


def _nmap(netns: str, dst: str, ports: list[int]) -> dict[int, str]:
    spec = ",".join(str(p) for p in ports)
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "nmap", "-sT", "-Pn", "-n", "-T4", "--max-retries", "1",
         "-p", spec, "-oG", "-", dst],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    states: dict[int, str] = {}
    for line in out.splitlines():
        if "Ports:" not in line:
            continue
        for item in line.split("Ports:", 1)[1].split("\t")[0].split(","):
            fields = item.strip().split("/")
            states[int(fields[0])] = fields[1]
    return states


@pytest.mark.skipif(shutil.which("nmap") is None, reason="nmap is not installed")
@pytest.mark.parametrize(
    ("src_role", "dst_role"),
    [("prem_manager", "cloud_manager"), ("prem_esxi_manager", "prem_manager")],
)
def test_agent_port_states_match_nmap(
    lab: labmod.Lab, report: dict[str, Any], src_role: str, dst_role: str
) -> None:
    src = lab.layout.of_role(src_role)[0]
    dst = lab.layout.of_role(dst_role)[0]
    checks = [
        c for c in report["checks"] if c["src_host"] == src.name and c["dst_host"] == dst.name
    ]
    assert checks
    seen = _nmap(src.netns, dst.address, sorted({c["port"] for c in checks}))
    wrong = [
        (c["port"], c["state"], seen.get(c["port"]))
        for c in checks
        if c["state"] not in NMAP_STATE.get(seen.get(c["port"], "?"), set())
    ]
    assert wrong == []


GATEWAY = {"user": "198.18.10.1", "on_prem": "198.18.1.1", "cloud": "198.18.2.1"}
INTERCONNECT = {"prem": "198.18.254.1", "cloud": "198.18.254.2"}
ROUTER_OF = {"user": "prem", "on_prem": "prem", "cloud": "cloud"}


def test_dropped_checks_name_the_router_that_dropped(
    lab: labmod.Lab, report: dict[str, Any]
) -> None:
    """In raw mode, the TCP traceroute's last hop is the router whose rule dropped the SYN."""
    topology, rules, _ = _raw(lab)
    site = {name: r["site"] for name, r in topology["roles"].items()}
    reported = [c for c in report["checks"] if c["cause"] == "dropped"]
    if not any(r["action"] == "drop" for r in rules):
        assert reported == []  # a scenario that drops nothing: no check may say "dropped"
        return
    dropped = [c for c in reported if c["mode"] == "syn"]
    assert dropped, "the scenario drops flows, but no dropped check was probed in raw mode"
    wrong = []
    for c in dropped:
        key = (c["interaction"], c["src_host"], c["dst_host"], c["port"])
        rule = blocking_rule(rules, key, c["src_role"], c["dst_role"])
        assert rule is not None and rule["action"] == "drop"
        here = ROUTER_OF[site[c["src_role"]]]
        at = rule.get("at", here)
        hop = GATEWAY[site[c["src_role"]]] if at == here else INTERCONNECT[at]
        if c["last_hop"] != hop:
            wrong.append((key, hop, c["last_hop"]))
    assert wrong == []
