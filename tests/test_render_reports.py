"""Every report format over one real evaluation (pass / fail / unknown mix): content,
validity, escaping, and agreement between the formats."""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from render_helpers import gates_for, load, make_evaluation

from netcheck.agent.wire import ProbeState, check_id
from netcheck.controller.expand import expand
from netcheck.controller.inventory import Inventory
from netcheck.controller.model import Device, Evaluation, GateDecision, Side
from netcheck.controller.ports import port_ranges
from netcheck.controller.render import FORMATS, render_page, render_report
from netcheck.controller.render.page_data import failure_runs
from netcheck.controller.render.rules import rules
from netcheck.controller.spec import Spec

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "controller/render/report.schema.json").read_text()
)
DOCKER = check_id(4, "pio-1", "prem-mgr", 2376)
DATA = check_id(9, "prem-mgr", "cloud-mgr", 6003)


@pytest.fixture(scope="module")
def site() -> tuple[Spec, Inventory, Evaluation, list[GateDecision]]:
    spec, inv = load()
    ev = make_evaluation(
        spec, inv, states={DOCKER: "refused", DATA: "filtered"}, untested_interactions=[12]
    )
    return spec, inv, ev, gates_for(spec, inv, ev)


def test_the_evaluation_is_a_mix(site: tuple[Spec, Inventory, Evaluation, Any]) -> None:
    _, _, ev, _ = site
    verdicts = {r.check.spec.check_id: r.verdict for r in ev.rows}
    assert verdicts[DOCKER] == verdicts[DATA] == "fail"
    assert sum(v == "unknown" for v in verdicts.values()) == 10  # 12: 3260, 9001-9002 both ways
    assert sum(v == "pass" for v in verdicts.values()) == len(ev.rows) - 12


def test_unknown_format_is_refused(site: tuple[Spec, Inventory, Evaluation, Any]) -> None:
    spec, _, ev, gates = site
    with pytest.raises(ValueError, match="unknown report format 'yaml'"):
        render_report(spec, ev, gates, "yaml")


def test_table(site: tuple[Spec, Inventory, Evaluation, Any]) -> None:
    spec, _, ev, gates = site
    out = render_report(spec, ev, gates, "table")
    assert "175 expected checks: 163 pass, 2 fail, 10 unknown" in out
    line4 = next(x for x in out.splitlines() if x.startswith("4 "))
    assert line4.split()[:3] == ["4", "FAIL", "14/15"]
    bad = next(x for x in out.splitlines() if "pio-1 -> prem-mgr:2376 (docker)" in x)
    assert "rejected" in bad and "firewall" in bad
    assert "deployment: NO-GO (1 blocking check)" in out
    assert "warm_vcd: NO-GO (12 blocking checks)" in out


def test_json_validates_against_the_schema(site: tuple[Spec, Inventory, Evaluation, Any]) -> None:
    spec, _, ev, gates = site
    data = json.loads(render_report(spec, ev, gates, "json"))
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(data, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert data["schema_version"] == 1
    assert data["summary"] == {
        "total": 175,
        "passed": 163,
        "failed": 2,
        "unknown": 10,
        "unexpected": 0,
        "verdict": "fail",
    }
    assert [c["check_id"] for c in data["checks"]] == [r.check.spec.check_id for r in ev.rows]
    docker = next(c for c in data["checks"] if c["check_id"] == DOCKER)
    assert docker["state"] == "refused" and docker["cause"] == "rejected"
    assert docker["observed_at"] == "2023-11-14T22:12:50Z"
    assert {g["mode"]: g["decision"] for g in data["gates"]}["deployment"] == "no-go"
    assert [i["id"] for i in data["interactions"]] == list(range(1, 16))


def test_the_schema_catches_drift(site: tuple[Spec, Inventory, Evaluation, Any]) -> None:
    spec, _, ev, gates = site
    data = json.loads(render_report(spec, ev, gates, "json"))
    del data["checks"][0]["diagnosis"]
    with pytest.raises(jsonschema.ValidationError, match="diagnosis"):
        jsonschema.validate(data, SCHEMA, cls=jsonschema.Draft202012Validator)
    data = json.loads(render_report(spec, ev, gates, "json"))
    data["summary"]["renamed"] = 1
    with pytest.raises(jsonschema.ValidationError, match="renamed"):
        jsonschema.validate(data, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_junit(site: tuple[Spec, Inventory, Evaluation, Any]) -> None:
    spec, _, ev, gates = site
    root = ET.fromstring(render_report(spec, ev, gates, "junit"))
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == len(ev.rows) == int(root.get("tests", ""))
    assert len(root.findall("./testsuite")) == len(spec.interactions)
    assert (root.get("failures"), root.get("skipped")) == ("2", "10")
    case = next(c for c in cases if c.get("name") == "pio-1 -> prem-mgr:2376 (docker)")
    assert case.get("classname") == "interaction 4: HDM PIO Appliance to HDM Prem Manager"
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == "rejected"
    assert "firewall" in (failure.text or "")
    assert len(root.findall("./testsuite/testcase/skipped")) == 10
    suite12 = next(
        s for s in root.iter("testsuite") if s.get("name", "").startswith("interaction 12:")
    )
    assert suite12.get("skipped") == "10"


def test_junit_and_markdown_escape_hostile_text(
    site: tuple[Spec, Inventory, Evaluation, Any],
) -> None:
    spec, _, ev, gates = site
    nasty = 'banner "<x>" & | pipe \x00\x1b end'
    rows = tuple(
        dataclasses.replace(r, diagnosis=nasty) if r.check.spec.check_id == DOCKER else r
        for r in ev.rows
    )
    ev2 = dataclasses.replace(ev, rows=rows, site="a|b <c>")
    root = ET.fromstring(render_report(spec, ev2, gates, "junit"))
    texts = [f.text for f in root.iter("failure")]
    assert 'banner "<x>" & | pipe  end' in texts
    md = render_report(spec, ev2, gates, "markdown")
    row = next(x for x in md.splitlines() if "2376/tcp" in x)
    assert "\\| pipe" in row
    assert row.count(" | ") == 6  # 7 cells: the pipe inside the diagnosis is escaped
    page = render_report(spec, ev2, gates, "html")
    assert "a|b <c>" not in page and "a|b &lt;c&gt;" in page
    assert "<x>" not in page


def test_markdown_is_a_firewall_ticket(site: tuple[Spec, Inventory, Evaluation, Any]) -> None:
    spec, _, ev, gates = site
    md = render_report(spec, ev, gates, "markdown")
    assert "## Failing flows (2)" in md
    row = next(x for x in md.splitlines() if "2376/tcp" in x)
    assert "pio-1 (198.18.1.10)" in row and "prem-mgr (198.18.1.30)" in row
    assert "allow TCP 198.18.1.10 -> 198.18.1.30:2376" in row
    assert "allow TCP 198.18.1.30 -> 198.18.2.30:6003" in md
    title = "HDM PIO Appliance to HDM Prem Manager"
    roles = "`pio` -> `prem_manager`, `prem_manager` -> `pio`"  # 32820 is pushed back
    assert f"| 4 | {title} | {roles} | **FAIL** | 14/15 | 1 | 0 |" in md
    # interaction 10: every flow is Cache -> Manager, whatever the title's order
    ten = "`cloud_cache` -> `cloud_manager`, `cloud_manager` -> `cloud_cache`"  # 5000-5010 both
    assert f"| 10 | HDM Cloud Manager and HDM Cloud Cache | {ten} |" in md
    assert "## Not yet known (10)" in md
    assert "## Firewall rules to request (2)" in md
    assert (
        "| allow TCP 198.18.1.10 -> 198.18.1.30 port 2376 | pio-1 (198.18.1.10) | "
        "prem-mgr (198.18.1.30) | 2376 | 4: HDM PIO Appliance to HDM Prem Manager | "
    ) in md
    # no device evidence in this evaluation (connect mode, no capture): said so
    assert "### Enforcing device not known" in md


@pytest.mark.parametrize(
    ("ports", "text"),
    [
        ([6000], "6000"),
        ([6002, 6000, 6001, 7000], "6000-6002, 7000"),
        ([12005, 12006, 12007, 12008, 12009, 12010, 22], "22, 12005-12010"),
        ([443, 443, 444], "443-444"),
    ],
)
def test_port_ranges_merge_neighbours(ports: list[int], text: str) -> None:
    assert port_ranges(ports) == text
    assert port_ranges(ports, sep=",") == text.replace(", ", ",")


def test_rules_to_request_merge_a_whole_range(
    site: tuple[Spec, Inventory, Evaluation, Any],
) -> None:
    spec, inv, _, _ = site
    dropped: dict[str, ProbeState] = {
        c.spec.check_id: "filtered" for c in expand(spec, inv) if c.spec.interaction == 9
    }
    ev = make_evaluation(spec, inv, states=dropped)
    (rule,) = rules(spec, [r for r in ev.rows if r.verdict == "fail"])
    assert rule.text == "allow TCP 198.18.1.30 -> 198.18.2.30 port 22, 443, 6000-6010, 7000-7010"
    assert (rule.interaction, rule.causes, rule.device, rule.side) == (9, ("dropped",), None, None)
    assert "port 600x and 700x" in rule.purpose  # the seed's purposes of those ports


def test_html_is_standalone_and_readable_without_js(
    site: tuple[Spec, Inventory, Evaluation, Any],
) -> None:
    spec, _, ev, gates = site
    page = render_report(spec, ev, gates, "html")
    assert page == render_page(spec, ev, gates, refresh_seconds=None)
    # nothing loaded from anywhere: no src/href attributes, no stylesheet links
    assert not re.search(r"\s(src|href)=", page)
    assert "<link" not in page and "@import" not in page
    assert re.findall(r"https?://[^\s\"']+", page) == ["http://www.w3.org/2000/svg"]
    assert 'data-refresh=""' in page
    assert 'id="gate-banner"' in page and 'id="details"' in page
    for inter in (4, 9):
        assert re.search(rf'<g class="edge verdict-fail[^"]*"\s+data-interaction="{inter}"', page)
    assert re.search(r'<g class="edge verdict-unknown[^"]*"\s+data-interaction="12"', page)
    assert re.search(r'<g class="edge verdict-pass[^"]*"\s+data-interaction="1"', page)
    for role in spec.roles:
        assert f'data-role="{role}"' in page
    assert re.search(r'class="role no-agent[^"]*" data-role="prem_esxi"', page)
    assert re.search(r'class="role agent[^"]*" data-role="pio"', page)
    assert ">4: 14/15<" in page and ">9: 23/24<" in page
    table = page[page.index('id="failures"') :]
    # 12 checks, one row per host pair's run of ports with one cause (12's are untested)
    assert table.count('<tr class="verdict-') == len(failure_runs(ev)) < 12
    assert re.search(r'data-check="4:pio-1&gt;prem-mgr:2376"', table)
    assert ">3260, 9001-9002 <" in table


def test_live_page_refreshes_itself(site: tuple[Spec, Inventory, Evaluation, Any]) -> None:
    spec, _, ev, gates = site
    page = render_page(spec, ev, gates, refresh_seconds=7)
    assert 'data-refresh="7"' in page
    # the embedded data (the page's, not the whole report) cannot close its <script> element
    embedded = page.split('id="page-data">', 1)[1].split("</script>", 1)[0]
    data = json.loads(embedded)
    assert data["summary"]["failed"] == 2 and "checks" not in data
    assert data["links"]["summary"] == "/api/v1/page"
    assert 'id="page-details"' not in page  # the live page fetches details on demand


def test_the_formats_agree(site: tuple[Spec, Inventory, Evaluation, Any]) -> None:
    spec, _, ev, gates = site
    out = {fmt: render_report(spec, ev, gates, fmt) for fmt in FORMATS}
    data = json.loads(out["json"])
    s = data["summary"]
    junit = ET.fromstring(out["junit"])
    totals = [int(junit.get(k, "")) for k in ("tests", "failures", "skipped")]
    assert totals == [s["total"], s["failed"], s["unknown"]]
    m = re.search(r"(\d+) expected checks: (\d+) pass, (\d+) fail, (\d+) unknown", out["table"])
    assert m is not None
    assert tuple(map(int, m.groups())) == (s["total"], s["passed"], s["failed"], s["unknown"])
    md = re.search(r"\*\*(\d+)\*\*: (\d+) pass, (\d+) fail, (\d+) unknown", out["markdown"])
    assert md is not None and md.groups() == m.groups()
    assert f'id="count-fail">{s["failed"]}<' in out["html"]
    for i in data["interactions"]:
        assert f">{i['id']}: {i['passed']}/{i['total']}<" in out["html"]
        suite = junit.find(f"./testsuite[@name='interaction {i['id']}: {i['title']}']")
        assert suite is not None and int(suite.get("tests", "")) == i["total"]


def test_the_ticket_groups_rules_by_enforcing_device(
    site: tuple[Spec, Inventory, Evaluation, Any],
) -> None:
    spec, _, ev, gates = site
    router = Device("198.18.1.1", 1, "prem-rt", "after")
    host = Device("198.18.1.30", 1, "prem-mgr")
    found: dict[str, tuple[Side, Device]] = {DOCKER: ("host", host), DATA: ("network", router)}
    rows = tuple(
        dataclasses.replace(
            r, side=found[r.check.spec.check_id][0], device=found[r.check.spec.check_id][1]
        )
        if r.check.spec.check_id in found
        else r
        for r in ev.rows
    )
    ev2 = dataclasses.replace(ev, rows=rows)
    md = render_report(spec, ev2, gates, "markdown")
    net = md.index("### In the network: 198.18.1.1 (prem-rt, hop 1)")
    assert "| dropped (at or just past this hop) |" in md
    own = md.index("### The destination host's own firewall: 198.18.1.30 (prem-mgr, hop 1)")
    assert net < own  # nearest device first
    assert md.index("port 6003", net) < own < md.index("port 2376", own)
    data = json.loads(render_report(spec, ev2, gates, "json"))
    jsonschema.validate(data, SCHEMA, cls=jsonschema.Draft202012Validator)
    first, second = data["rules"]
    assert first["device"] == {"address": "198.18.1.1", "hops": 1, "name": "prem-rt", "at": "after"}
    assert (first["side"], first["ports"], first["interaction"]) == ("network", "6003", 9)
    assert (first["src_host"], first["dst_host"], first["direction"]) == (
        "prem-mgr",
        "cloud-mgr",
        "forward",
    )
    assert first["purpose"] and first["direction_stated"] is True
    assert (second["side"], second["device"]["name"], second["ports"]) == (
        "host",
        "prem-mgr",
        "2376",
    )
    docker = next(c for c in data["checks"] if c["check_id"] == DOCKER)
    assert (docker["side"], docker["device"]["address"], docker["seen_from"]) == (
        "host",
        "198.18.1.30",
        [],
    )
