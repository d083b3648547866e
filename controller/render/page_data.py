"""What the topology page's script reads: a compact summary, and details fetched on demand.

The page embeds (and its script polls) :func:`page_summary`: the gates, the roll-up of each
interaction and role, and the first :data:`FAILURES_SHOWN` failing runs (merged port ranges,
:mod:`page_rows`) with their count, a few kilobytes whatever the size of the site. A click on
an interaction or a role fetches its details (:func:`interaction_details`,
:func:`role_details`), the table's next rows a page of :func:`failures_page`; each document
is bounded (:data:`ROWS_PER_FLOW`, :data:`HOSTS_SHOWN`, :data:`MAX_PAGE`). The summary also
carries the VMs' readiness (the least ready :data:`page_vms.VMS_SHOWN`, with counts; a VM
role's details list more) and the interconnect's path counts; an interaction's details its
measured paths, each figure against its threshold (:mod:`page_vms`). The whole report
stays at ``/api/v1/report`` for machines. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from netcheck.controller.gate import VM_ROLES
from netcheck.controller.inventory import Inventory
from netcheck.controller.model import CheckRow, Evaluation, GateDecision
from netcheck.controller.render.common import (
    flow_dict,
    flow_directions,
    iso,
    rollup_of,
    rows_of,
    summary,
)
from netcheck.controller.render.gates import gate_headline, gate_who
from netcheck.controller.render.page_rows import PageRow, merged, not_passing_merged, row_dict
from netcheck.controller.render.page_vms import (
    ROLE_VMS,
    VMS_SHOWN,
    path_counts,
    path_rows,
    vm_rows,
    vms_block,
)
from netcheck.controller.spec import Spec

PAGE_SCHEMA = 1
FAILURES_SHOWN = 100  # failing runs in the page itself (the table pages on)
MAX_PAGE = 500  # runs per page of /api/v1/page/failures
ROWS_PER_FLOW = 100  # failing runs per port range in an interaction's details
PASSING_SHOWN = 6  # passing runs listed for a port range that has no failure
HOSTS_SHOWN = 200  # hosts listed in a role's details
ROLE_ROWS = 200  # failing runs in a role's details
# Where the page's script fetches from (relative to the page's origin).
LINKS = {
    "summary": "/api/v1/page",
    "failures": "/api/v1/page/failures",
    "interaction": "/api/v1/page/interaction/",
    "role": "/api/v1/page/role/",
    "history": "/api/v1/history",
}


def _gate(g: GateDecision) -> dict[str, Any]:
    return {
        "mode": g.mode,
        "vm": g.vm,
        "who": gate_who(g),
        "decision": g.decision,
        "blocking": len(g.blocking),
        "headline": gate_headline(g),
        "reasons": list(g.reasons[:5]),
    }


def _interactions(spec: Spec, ev: Evaluation) -> list[dict[str, Any]]:
    out = []
    measured = {p.interaction for p in ev.paths}
    for inter in spec.interactions:
        r = rollup_of(ev, inter)
        fwd, rev = flow_directions(inter)
        paths = (
            path_counts([p for p in ev.paths if p.interaction == inter.id])
            if inter.id in measured
            else None
        )
        out.append(
            {
                "id": inter.id,
                "title": inter.title,
                "source": inter.source,
                "destination": inter.destination,
                "interconnect": inter.interconnect,
                "forward": fwd,
                "reverse": rev,
                "modes": list(spec.modes_of(inter.id)),
                "flows": [flow_dict(f) for f in inter.flows],
                "passed": r.passed,
                "failed": r.failed,
                "unknown": r.unknown,
                "total": r.total,
                "verdict": r.verdict if r.total else "unknown",
                "paths": paths,  # None: the interaction is not qualified
            }
        )
    return out


def _hosts(ev: Evaluation) -> dict[str, dict[str, str]]:
    """role -> host -> address, over every expected check."""
    hosts: dict[str, dict[str, str]] = {}
    for row in ev.rows:
        c = row.check
        hosts.setdefault(c.src_role, {})[c.src_host] = c.src_address
        hosts.setdefault(c.spec.dst_role, {})[c.spec.dst_host] = c.spec.dst_address
    return hosts


def _reporting(ev: Evaluation) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in ev.agents:
        out[a.role] = out.get(a.role, 0) + (a.last_report is not None)
    return out


def _roles(spec: Spec, ev: Evaluation, interactions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    hosts, reporting = _hosts(ev), _reporting(ev)
    out = []
    for key, role in spec.roles.items():
        vs = [
            i["verdict"]
            for i in interactions
            if key in (i["source"], i["destination"]) and i["total"]
        ]
        verdict = (
            "none"
            if not vs
            else "fail"
            if "fail" in vs
            else "unknown"
            if "unknown" in vs
            else "pass"
        )
        out.append(
            {
                "role": key,
                "name": role.name,
                "site": role.site,
                "agent": role.agent,
                "hosts": len(hosts.get(key, ())),
                "agents_reporting": reporting.get(key, 0),
                "verdict": verdict,
            }
        )
    return out


def failure_runs(ev: Evaluation) -> list[PageRow]:
    """Every failing run, then every unknown one (what the failures table lists)."""
    return not_passing_merged(ev.rows)


def page_summary(
    spec: Spec,
    ev: Evaluation,
    gates: Sequence[GateDecision],
    runs: Sequence[PageRow],
    extra: Mapping[str, Any] | None = None,
    inventory: Inventory | None = None,
) -> dict[str, Any]:
    """The page's data: small whatever the site's size. ``runs``: :func:`failure_runs`.
    ``extra``: blocks shown when present (``config``, ``never_registered``), JSON-ready.
    ``inventory``: where a VM's OS and boot mode come from when its guest did not say."""
    s = summary(ev)
    interactions = _interactions(spec, ev)
    out: dict[str, Any] = {
        "page_schema": PAGE_SCHEMA,
        "site": ev.site,
        "generated_at": iso(ev.generated_at),
        "summary": {
            "total": s.total,
            "passed": s.passed,
            "failed": s.failed,
            "unknown": s.unknown,
            "unexpected": s.unexpected,
            "verdict": s.verdict,
        },
        "gates": [_gate(g) for g in gates],
        "interactions": interactions,
        "roles": _roles(spec, ev, interactions),
        "failures": failures_page(runs, 0, FAILURES_SHOWN),
        "vms": vms_block(vm_rows(spec, ev, inventory), VMS_SHOWN),
        "interconnect": path_counts(ev.paths),
        "links": LINKS,
    }
    out.update({k: v for k, v in (extra or {}).items() if v is not None})
    return out


def failures_page(runs: Sequence[PageRow], offset: int, limit: int) -> dict[str, Any]:
    """``limit`` runs from ``offset`` (bounded by :data:`MAX_PAGE`), with the totals."""
    offset = max(0, offset)
    limit = max(1, min(limit, MAX_PAGE))
    return {
        "offset": offset,
        "limit": limit,
        "total": len(runs),
        "checks": sum(len(r.rows) for r in runs),
        "failed": sum(len(r.rows) for r in runs if r.first.verdict == "fail"),
        "rows": [row_dict(r) for r in runs[offset : offset + limit]],
    }


def _in_flow(row: CheckRow, lo: int, hi: int, direction: str) -> bool:
    return lo <= row.check.spec.port <= hi and direction in ("both", row.check.direction)


def _span(ports: str) -> tuple[int, int]:
    lo, _, hi = ports.partition("-")
    return int(lo), int(hi or lo)


def interaction_details(spec: Spec, ev: Evaluation, inter_id: int) -> dict[str, Any] | None:
    """One interaction: per port range of the spec, its counts and its failing runs (bounded),
    or a few passing ones when none fails. None when the spec has no such interaction."""
    summary_of = {i["id"]: i for i in _interactions(spec, ev)}
    inter = summary_of.get(inter_id)
    if inter is None:
        return None
    rows = rows_of(ev, inter_id)
    flows = []
    for f in inter["flows"]:
        lo, hi = _span(f["ports"])
        in_flow = [r for r in rows if _in_flow(r, lo, hi, f["direction"])]
        bad = not_passing_merged(in_flow)
        passed = sum(r.verdict == "pass" for r in in_flow)
        shown = bad[:ROWS_PER_FLOW] if bad else merged(in_flow)[:PASSING_SHOWN]
        flows.append(
            {
                **f,
                "checks": len(in_flow),
                "passed": passed,
                "runs": len(bad) if bad else len(merged(in_flow)),
                "rows": [row_dict(r) for r in shown],
            }
        )
    return {"kind": "interaction", **inter, "flows": flows, "paths": path_rows(ev.paths, inter_id)}


def role_details(
    spec: Spec, ev: Evaluation, key: str, inventory: Inventory | None = None
) -> dict[str, Any] | None:
    """One role: its hosts (bounded) with their stand-in listeners, the ports it accepts, its
    interactions, its failing runs (bounded), and a VM role's VMs' readiness (bounded).
    None when the spec has no such role."""
    role = spec.roles.get(key)
    if role is None:
        return None
    interactions = _interactions(spec, ev)
    hosts = sorted(_hosts(ev).get(key, {}).items())
    listed = []
    for name, address in hosts[:HOSTS_SHOWN]:
        ls = ev.listeners.get(name, ())
        down = [f"{x.port} {x.state}" for x in ls if x.state != "listening"]
        listed.append({"name": name, "address": address, "listeners": len(ls), "down": down[:20]})
    ports = []
    for i in interactions:
        for f in i["flows"]:
            listener = i["source"] if f["direction"] == "reverse" else i["destination"]
            if listener == key or (f["direction"] == "both" and key in (i["source"],)):
                ports.append({"ports": f["ports"], "service": f["service"], "interaction": i["id"]})
    mine = [r for r in ev.rows if key in (r.check.src_role, r.check.spec.dst_role)]
    bad = not_passing_merged(mine)
    reporting = _reporting(ev).get(key, 0)
    return {
        "kind": "role",
        "role": key,
        "name": role.name,
        "site": role.site,
        "agent": role.agent,
        "agents_reporting": reporting,
        "hosts_total": len(hosts),
        "hosts": listed,
        "ports": ports,
        "interactions": [
            {k: i[k] for k in ("id", "title", "verdict", "passed", "total")}
            for i in interactions
            if key in (i["source"], i["destination"])
        ],
        "failing_total": len(bad),
        "failing": [row_dict(r) for r in bad[:ROLE_ROWS]],
        "vms": vms_block(vm_rows(spec, ev, inventory, key), ROLE_VMS) if key in VM_ROLES else None,
    }


def snapshot_details(
    spec: Spec, ev: Evaluation, inventory: Inventory | None = None
) -> dict[str, Any]:
    """Every interaction's and role's details, for a page with no controller behind it (an
    exported file): keyed ``"interaction:<id>"`` and ``"role:<key>"``."""
    out: dict[str, Any] = {}
    for inter in spec.interactions:
        out[f"interaction:{inter.id}"] = interaction_details(spec, ev, inter.id)
    for key in spec.roles:
        out[f"role:{key}"] = role_details(spec, ev, key, inventory)
    return out
