"""End to end: the whole lab per shipped scenario, checked against the scenario file.

For every shipped scenario the lab comes up (namespaces, nftables, controller, agents,
stand-ins), one probe round runs, and the controller's JSON report must agree check by
check with a verdict computed HERE, independently of the product's code, from the raw
scenario file, the raw topology.yaml and the generated inventory. Where nmap is installed,
the agent's port states from two sources are cross-checked against ``nmap -sT``.

The ``diagnosis`` scenario runs twice, in SYN mode (``auto`` as root) and in connect mode:
besides verdict and cause, each failing check must name its side (``network`` for a router's
rule, ``host`` for the destination's own firewall), the device that acted (its address, or
none for a reset forged in the destination's name, and its hop count), and a NAT'd check the
address the destination saw. Hops follow the lab's wiring: the source's own router is hop 1,
the other site's router hop 2 (its interconnect address), the destination one hop further.
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
            fwd = (inter["source"], inter["destination"])
            ways = {"forward": [fwd], "reverse": [fwd[::-1]], "both": [fwd, fwd[::-1]]}
            for src, dst in ways[flow.get("direction", "forward")]:
                for s in hosts.get(src, []):
                    for d in hosts.get(dst, []):
                        for port in _ports(flow["ports"]):
                            out[(inter["id"], s, d, port)] = f"{src}>{dst}"
    return out


def matching_rule(
    rules: list[dict[str, Any]], key: Key, src_role: str, dst_role: str
) -> dict[str, Any] | None:
    """The first rule (or NAT rule) of ``rules`` that selects this check."""
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


CAUSE = {"drop": "dropped", "prohibit": "prohibited", "host-unreachable": "unreachable"}


def expectation(
    scen: dict[str, Any],
    key: Key,
    pair: str,
    agent_roles: set[str],
    mode: str = "syn",
    landed: bool = False,
) -> tuple[str, set[str]]:
    """(verdict, acceptable causes) for one check, probed in ``mode``; ``landed``: the report
    carries the diagnosis of issue 13 (SYN-mode NAT evidence)."""
    src_role, dst_role = pair.split(">")
    rule = matching_rule(scen.get("rules") or [], key, src_role, dst_role)
    if rule is None:
        nat = matching_rule(scen.get("nat") or [], key, src_role, dst_role)
        if nat is None or dst_role not in agent_roles:  # only an agent there sees the source
            return "pass", {"ok"}
        # a SYN probe completes no connection: before issue 13 nothing saw the new source
        return "pass", {"nat"} if mode == "connect" or landed else {"ok", "nat"}
    if rule["action"] in CAUSE:
        return "fail", {CAUSE[rule["action"]]}
    # a reset while the destination listens: only an agent there can prove it listened
    return "fail", {"rejected"} if dst_role in agent_roles else {"rejected", "refused"}


GATEWAY = {"user": "198.18.10.1", "on_prem": "198.18.1.1", "cloud": "198.18.2.1"}
INTERCONNECT = {"prem": "198.18.254.1", "cloud": "198.18.254.2"}
ROUTER_OF = {"user": "prem", "on_prem": "prem", "cloud": "cloud"}


def router_hop(router: str, src_site: str) -> tuple[str, int]:
    """(address, hop) of ``router`` as seen from a host of ``src_site``: its own router
    answers from the source's gateway at hop 1, the other one from its interconnect end."""
    if router == ROUTER_OF[src_site]:
        return GATEWAY[src_site], 1
    return INTERCONNECT[router], 2


def dst_hops(src_site: str, dst_site: str) -> int:
    return 2 if ROUTER_OF[src_site] == ROUTER_OF[dst_site] else 3


def nat_address(nat: dict[str, Any], src_site: str, dst_site: str) -> str:
    """The source address the destination sees: the snat address, or for masquerade the
    NAT router's address on its way out (the destination's gateway, or its interconnect end)."""
    if "snat" in nat:
        return str(nat["snat"])
    router = nat.get("at", ROUTER_OF[src_site])
    return GATEWAY[dst_site] if ROUTER_OF[dst_site] == router else INTERCONNECT[router]


def last_hop(rule: dict[str, Any], src_site: str, dst_site: str) -> tuple[str, int]:
    """The last hop a TCP traceroute gets an answer from, for a drop by ``rule``: the router
    that drops (it answers time-exceeded before its forward chain), or for a host's own
    firewall the router before the destination."""
    if rule.get("at") == "host":
        return router_hop(ROUTER_OF[dst_site], src_site)
    return router_hop(rule.get("at", ROUTER_OF[src_site]), src_site)


def diagnosis(
    scen: dict[str, Any], c: dict[str, Any], site: dict[str, str]
) -> dict[str, Any] | None:
    """What the diagnosis must say of check ``c`` (side, device, seen_from), from the
    scenario: None when the scenario does not touch it."""
    key = (c["interaction"], c["src_host"], c["dst_host"], c["port"])
    ss, ds = site[c["src_role"]], site[c["dst_role"]]
    rule = matching_rule(scen.get("rules") or [], key, c["src_role"], c["dst_role"])
    if rule is None:
        nat = matching_rule(scen.get("nat") or [], key, c["src_role"], c["dst_role"])
        return None if nat is None else {"seen_from": [nat_address(nat, ss, ds)]}
    if rule.get("at") == "host":
        return {"side": "host", "address": c["dst_address"], "hops": dst_hops(ss, ds)}
    address, hops = last_hop(rule, ss, ds)
    if rule["action"] == "reset":  # forged in the destination's name: no address of its own
        return {"side": "network", "address": None, "hops": hops}
    return {"side": "network", "address": address, "hops": hops}


# --- the lab ---------------------------------------------------------------------------


# Every shipped scenario in the default mode (SYN probes as root); the diagnosis also in
# connect mode.
RUNS = [(name, "auto") for name in shipped()] + [("diagnosis", "connect")]


@pytest.fixture(scope="module", params=RUNS, ids=[f"{n}-{m}" for n, m in RUNS])
def lab(request: pytest.FixtureRequest) -> Iterator[labmod.Lab]:
    name, mode = request.param
    with labmod.ready_session(name, PREFIX, STATE, "netns", probe_mode=mode) as running:
        if _needs_destination_evidence(name):
            # What a destination saw (peers, captured SYNs) travels in its agent's NEXT batch:
            # until then the SYN of the probe before stands in (controller.evaluate), and in
            # the first round there is none.
            assert running.wait_round(time.time(), 6.0, 3 * labmod.LAB_PERIOD_S + 20) == []
        yield running


def _needs_destination_evidence(scenario: str) -> bool:
    """Whether the scenario's diagnosis rests on the destination agent's evidence: NAT (the
    peers it saw) or a host firewall's drop (the SYN its interface captured)."""
    scen = yaml.safe_load((REPO / "deploy/lab/scenarios" / f"{scenario}.yaml").read_text())
    host_rule = any(r.get("at") == "host" for r in scen.get("rules") or [])
    return bool(scen.get("nat")) or host_rule


@pytest.fixture(scope="module")
def report(lab: labmod.Lab) -> dict[str, Any]:
    status, body = lab.get("/api/v1/report?format=json", 20.0)
    assert status == 200, body[:500]
    data: dict[str, Any] = json.loads(body)
    return data


def _raw(lab: labmod.Lab) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[str]]]:
    topology = yaml.safe_load((REPO / "topology.yaml").read_text())
    scen = yaml.safe_load((REPO / "deploy/lab/scenarios" / f"{lab.scenario}.yaml").read_text())
    inv = yaml.safe_load((lab.state / "inventory.yaml").read_text())
    hosts = {role: [h["name"] for h in hs] for role, hs in inv["hosts"].items()}
    return topology, scen, hosts


def _mode(report: dict[str, Any]) -> str:
    """The agents' probe mode in this run ("syn" or "connect")."""
    modes = {a["mode"] for a in report["agents"]}
    assert len(modes) == 1, modes
    return "connect" if modes == {"connect"} else "syn"


def _landed(report: dict[str, Any]) -> bool:
    """Whether the report carries issue 13's diagnosis (side, device, seen_from)."""
    return all("side" in c and "seen_from" in c for c in report["checks"])


def test_every_check_agrees_with_the_scenario(lab: labmod.Lab, report: dict[str, Any]) -> None:
    topology, scen, hosts = _raw(lab)
    rules = scen.get("rules") or []
    agent_roles = {name for name, r in topology["roles"].items() if r["agent"]}
    wanted = expected_checks(topology, hosts)
    got = {(c["interaction"], c["src_host"], c["dst_host"], c["port"]): c for c in report["checks"]}
    assert set(got) == set(wanted)
    mode, landed = _mode(report), _landed(report)
    wrong = []
    for key, pair in sorted(wanted.items()):
        verdict, causes = expectation(scen, key, pair, agent_roles, mode, landed)
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
    topology, scen, hosts = _raw(lab)
    agent_roles = {name for name, r in topology["roles"].items() if r["agent"]}
    wanted = expected_checks(topology, hosts)
    failing = {
        key[0] for key, pair in wanted.items() if expectation(scen, key, pair, agent_roles)[0]
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


def test_dropped_checks_name_the_router_that_dropped(
    lab: labmod.Lab, report: dict[str, Any]
) -> None:
    """The TCP traceroute's last hop is the router whose rule dropped the SYN (or, for a
    host's own firewall, the router before it): always in SYN mode, and in connect mode
    whenever the agent's connect traceroute names one."""
    topology, scen, _ = _raw(lab)
    rules = scen.get("rules") or []
    site = {name: r["site"] for name, r in topology["roles"].items()}
    reported = [c for c in report["checks"] if c["cause"] == "dropped"]
    if not any(r["action"] == "drop" for r in rules):
        assert reported == []  # a scenario that drops nothing: no check may say "dropped"
        return
    mode = _mode(report)
    dropped = [c for c in reported if c["mode"] == mode]
    assert dropped, f"the scenario drops flows, but no dropped check was probed in {mode} mode"
    wrong = []
    for c in dropped:
        key = (c["interaction"], c["src_host"], c["dst_host"], c["port"])
        rule = matching_rule(rules, key, c["src_role"], c["dst_role"])
        assert rule is not None and rule["action"] == "drop"
        hop, hops = last_hop(rule, site[c["src_role"]], site[c["dst_role"]])
        if mode == "connect" and c["last_hop"] is None:
            continue
        if c["last_hop"] != hop or c.get("last_hop_hops") not in (None, hops):
            wrong.append((key, hop, hops, c["last_hop"], c.get("last_hop_hops")))
    assert wrong == []


def test_failing_checks_name_side_device_and_nat_address(
    lab: labmod.Lab, report: dict[str, Any]
) -> None:
    """Side (network or host), the enforcing device's address and hop, and the NAT address
    the destination saw, as the scenario file says (when the report carries them). Hops are
    compared where the agents report them (``responder_hops``, ``last_hop_hops``); a drop by
    a host's own firewall is said to be the host's where the destination's SYN capture
    reports, else it must name the last router that answered."""
    if not _landed(report):
        pytest.skip("the report has no side/device/seen_from (issue 13 not landed)")
    topology, scen, _ = _raw(lab)
    site = {name: r["site"] for name, r in topology["roles"].items()}
    agent_roles = {name for name, r in topology["roles"].items() if r["agent"]}
    wrong = []
    touched = 0
    for c in report["checks"]:
        want = diagnosis(scen, c, site)
        if want is None:
            continue
        touched += 1
        if "seen_from" in want:
            if c["dst_role"] in agent_roles and c["seen_from"] != want["seen_from"]:
                wrong.append((c["check_id"], want, c["seen_from"], c["diagnosis"]))
            continue
        dev = c["device"] or {}
        got = {"side": c["side"], "address": dev.get("address"), "hops": dev.get("hops")}
        if got["side"] is None:
            # evidence not reported (no capture at the destination, no traceroute in connect
            # mode yet): a drop names at most the last router that answered
            if want["side"] == "host" and c["cause"] == "dropped":
                ss, ds = site[c["src_role"]], site[c["dst_role"]]
                address, hops = router_hop(ROUTER_OF[ds], ss)
                want = {**want, "address": address, "hops": hops}
            want = {**want, "side": None}
            if got["address"] is None:
                want = {**want, "address": None}
        if got["hops"] is None:  # hops from the agent's traceroute or the reply's TTL
            want = {**want, "hops": None}
        if got != want:
            wrong.append((c["check_id"], want, got, c["diagnosis"]))
    assert wrong == [], "\n".join(str(w) for w in wrong[:30])
    assert touched == 0 or scen.get("rules") or scen.get("nat")


def test_a_host_firewall_reads_host_through_the_rounds(lab: labmod.Lab) -> None:
    """What the destination's capture saw travels a batch behind the source's result: the
    diagnosis of a host firewall must say ``host`` all along, never ``network`` (its silence
    read before it was reported) nor nothing, sampled twice a second over two rounds."""
    topology, scen, _ = _raw(lab)
    if not any(r.get("at") == "host" for r in scen.get("rules") or []):
        pytest.skip("the scenario has no host firewall")
    site = {name: r["site"] for name, r in topology["roles"].items()}
    wrong: list[tuple[int, str, Any, str]] = []
    samples, deadline = 0, time.monotonic() + 2 * labmod.LAB_PERIOD_S + 10
    while time.monotonic() < deadline:
        status, body = lab.get("/api/v1/report?format=json", 20.0)
        assert status == 200, body[:500]
        for c in json.loads(body)["checks"]:
            want = diagnosis(scen, c, site)
            if want is not None and want.get("side") == "host" and c["side"] != "host":
                wrong.append((samples, c["check_id"], c["side"], c["diagnosis"]))
        samples += 1
        time.sleep(0.5)
    assert samples >= 10
    assert wrong == [], "\n".join(str(w) for w in wrong[:30])
