"""The JSON report: THE stable machine interface (see report.schema.json, REPORT_SCHEMA.md).

Add fields, never rename or remove them; bump ``SCHEMA_VERSION`` only for a breaking change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from netcheck.agent.wire import encode
from netcheck.controller import interconnect
from netcheck.controller.awaited import never_registered
from netcheck.controller.gate import decision_to_dict
from netcheck.controller.model import (
    AgentSeen,
    CheckRow,
    Device,
    Evaluation,
    GateDecision,
    Rollup,
)
from netcheck.controller.refusals import RefusedRegistration
from netcheck.controller.render.common import VERDICTS, flow_dict, iso, rollup_of, summary
from netcheck.controller.render.rules import Rule, rules
from netcheck.controller.render.vms import vm_dicts
from netcheck.controller.spec import Spec

SCHEMA_VERSION = 1


def _rollup(r: Rollup) -> dict[str, Any]:
    return {
        "key": r.key,
        "title": r.title,
        "src_role": r.src_role,
        "dst_role": r.dst_role,
        "passed": r.passed,
        "failed": r.failed,
        "unknown": r.unknown,
        "total": r.total,
        "verdict": r.verdict,
    }


def _check(row: CheckRow, ev: Evaluation) -> dict[str, Any]:
    c, r = row.check, row.result
    sc = r.service_check if r else None
    return {
        "check_id": c.spec.check_id,
        "interaction": c.spec.interaction,
        "src_role": c.src_role,
        "src_host": c.src_host,
        "src_address": c.src_address,
        "dst_role": c.spec.dst_role,
        "dst_host": c.spec.dst_host,
        "dst_address": c.spec.dst_address,
        "port": c.spec.port,
        "service": c.spec.service,
        "expect": c.spec.expect,
        "direction": c.direction,
        "modes": list(c.modes),
        "verdict": row.verdict,
        "cause": row.cause,
        "diagnosis": row.diagnosis,
        "state": r.state if r else None,
        "mode": r.mode if r else None,
        "attempts": r.attempts if r else None,
        "latency_s": r.latency_s if r else None,
        "observed_at": iso(r.started_at) if r else None,
        "last_hop": r.last_hop if r else None,
        "last_hop_hops": r.last_hop_hops if r else None,
        "responder": r.responder if r else None,
        "responder_hops": r.responder_hops if r else None,
        "direction_stated": c.direction_stated,
        "side": row.side,
        "device": _device(row.device),
        "seen_from": list(row.seen_from),
        "service_check": encode(sc) if sc else None,
        "sent_by": (ev.sent_by.get(c.spec.check_id) or None) if r else None,
        **_history(row, ev),
    }


def _history(row: CheckRow, ev: Evaluation) -> dict[str, Any]:
    """first_seen, last_change, failing_since (a failing check's current outage), flaps."""
    h = ev.history.get(row.check.spec.check_id)
    if h is None:
        return {"first_seen": None, "last_change": None, "failing_since": None, "flaps": 0}
    failing = h.failing_since if row.verdict == "fail" else None
    return {
        "first_seen": iso(h.first_seen),
        "last_change": iso(h.last_change),
        "failing_since": iso(failing),
        "flaps": h.flaps,
    }


def _device(d: Device | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {"address": d.address, "hops": d.hops, "name": d.name or None, "at": d.at}


def _rule(r: Rule) -> dict[str, Any]:
    return {
        "device": _device(r.device),
        "side": r.side,
        "action": r.action,
        "src_role": r.src_role,
        "src_host": r.src_host,
        "src_address": r.src_address,
        "dst_role": r.dst_role,
        "dst_host": r.dst_host,
        "dst_address": r.dst_address,
        "ports": r.ports,
        "interaction": r.interaction,
        "title": r.title,
        "purpose": r.purpose,
        "direction": r.direction,
        "direction_stated": r.direction_stated,
        "causes": list(r.causes),
    }


def _agent(a: AgentSeen) -> dict[str, Any]:
    return {
        "role": a.role,
        "host": a.host,
        "address": a.address,
        "mode": a.mode,
        "version": a.version,
        "last_report": iso(a.last_report),
    }


def _roles(spec: Spec, ev: Evaluation) -> list[dict[str, Any]]:
    hosts: dict[str, dict[str, str]] = {name: {} for name in spec.roles}
    for row in ev.rows:
        c = row.check
        hosts.setdefault(c.src_role, {})[c.src_host] = c.src_address
        hosts.setdefault(c.spec.dst_role, {})[c.spec.dst_host] = c.spec.dst_address
    reporting: dict[str, int] = {}
    for a in ev.agents:
        reporting[a.role] = reporting.get(a.role, 0) + (a.last_report is not None)
    return [
        {
            "role": name,
            "name": role.name,
            "site": role.site,
            "agent": role.agent,
            "hosts": [{"name": h, "address": addr} for h, addr in sorted(hosts[name].items())],
            "agents_reporting": reporting.get(name, 0),
        }
        for name, role in spec.roles.items()
    ]


def _refused(r: RefusedRegistration) -> dict[str, Any]:
    return {**asdict(r), "at": iso(r.at)}


def report_dict(
    spec: Spec,
    ev: Evaluation,
    gates: Sequence[GateDecision],
    refused_registrations: Sequence[RefusedRegistration] = (),
    config: dict[str, Any] | None = None,
    exposure: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole report as JSON-ready data. ``config``: a running controller's configuration
    status (:meth:`controller.reload.ConfigStatus.to_dict`); null in reports made from --db."""
    s = summary(ev)
    interactions = []
    for inter in spec.interactions:
        r = rollup_of(ev, inter)
        interactions.append(
            {
                "id": inter.id,
                "title": inter.title,
                "source": inter.source,
                "destination": inter.destination,
                "interconnect": inter.interconnect,
                "modes": list(spec.modes_of(inter.id)),
                "flows": [flow_dict(f) for f in inter.flows],
                "passed": r.passed,
                "failed": r.failed,
                "unknown": r.unknown,
                "total": r.total,
                "verdict": r.verdict,
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": iso(ev.generated_at),
        "site": ev.site,
        "summary": {
            "total": s.total,
            "passed": s.passed,
            "failed": s.failed,
            "unknown": s.unknown,
            "unexpected": s.unexpected,
            "verdict": s.verdict,
        },
        "verdicts": list(VERDICTS),
        "roles": _roles(spec, ev),
        "interactions": interactions,
        "role_pairs": [_rollup(r) for r in ev.by_role_pair],
        "checks": [_check(row, ev) for row in ev.rows],
        "rules": [_rule(r) for r in rules(spec, [x for x in ev.rows if x.verdict == "fail"])],
        "unexpected": [encode(r) for r in ev.unexpected],
        "listeners": {host: encode(list(ls)) for host, ls in sorted(ev.listeners.items())},
        "agents": [_agent(a) for a in ev.agents],
        "never_registered": [asdict(a) for a in never_registered(spec, ev)],
        "gates": [decision_to_dict(g, ev) for g in gates],
        "vms": vm_dicts(spec, ev),
        "refused_registrations": [_refused(r) for r in refused_registrations],
        "config": config,
        # The exposure audit (controller.exposure.to_dict): every agent's newest sweep and
        # the open ports the spec does not list for their pair.
        "exposure": exposure or {"sweeps": [], "findings": [], "close": []},
        # Interconnect qualification (controller.interconnect): every qualified data path,
        # its verdict and each figure against its threshold.
        "paths": [interconnect.to_dict(p, iso) for p in ev.paths],
    }


def render(
    spec: Spec,
    ev: Evaluation,
    gates: Sequence[GateDecision],
    refused_registrations: Sequence[RefusedRegistration] = (),
    *,
    compact: bool = False,
    config: dict[str, Any] | None = None,
    exposure: dict[str, Any] | None = None,
) -> str:
    """The report as JSON text: indented for people, or ``compact`` (one line, the same
    data; what the API serves: the C encoder, several times faster on a big site)."""
    data = report_dict(spec, ev, gates, refused_registrations, config, exposure)
    if compact:
        return chunked_dumps(data) + "\n"
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


SLICE = 2_000  # list items per call of the C encoder (a few ms each)
_SHORT = 64  # a list this short is walked item by item (a gate's blocking list is inside one)


def chunked_dumps(data: Any) -> str:
    """``json.dumps(data)``, the same text, made of many short calls of the C encoder: it
    holds the interpreter lock for a whole call, and one call over a big site's report (150 MB
    of JSON: checks, and every gate's blocking checks) held every other thread, the event loop
    answering readers and agents included, for seconds. Dicts, and lists of up to
    :data:`_SHORT` items, are walked; a longer list is encoded :data:`SLICE` items at a time."""
    parts: list[str] = []
    _chunks(data, parts)
    return "".join(parts)


def _key(k: Any) -> str:
    """A dict key as json.dumps writes it (a number or a boolean becomes a string)."""
    return json.dumps(k) if isinstance(k, str) else json.dumps({k: None})[1:-7]


def _chunks(o: Any, out: list[str]) -> None:
    if isinstance(o, dict) and o:
        sep = "{"
        for k, v in o.items():
            out += [sep, _key(k), ": "]
            _chunks(v, out)
            sep = ", "
        out.append("}")
    elif isinstance(o, list | tuple) and len(o) > _SHORT:
        sep = "["
        for i in range(0, len(o), SLICE):
            out += [sep, json.dumps(list(o[i : i + SLICE]))[1:-1]]
            sep = ", "
        out.append("]")
    elif isinstance(o, list | tuple) and o:
        sep = "["
        for v in o:
            out.append(sep)
            _chunks(v, out)
            sep = ", "
        out.append("]")
    else:
        out.append(json.dumps(o))
