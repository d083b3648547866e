"""The page's VM readiness and interconnect figures, bounded (the JSON report has them all).

VM readiness (:func:`vm_rows`): one row per guest VM (render/vms.py's VMs), per migration
mode its state (``blocks``, ``warns``, ``unknown``, ``ready``) and the prepare step that
would fail or warn, the OS and boot mode with where they come from (the guest agent's
facts, else the inventory; a warning where the two disagree), and for a VM with no guest
agent report which facts are unknown and why. The summary lists the :data:`VMS_SHOWN`
worst VMs with the counts; a VM role's details list its VMs up to :data:`ROLE_VMS`.

Paths (:func:`path_counts`, :func:`path_rows`): an interaction's measured paths with each
figure against its threshold, :data:`PATHS_SHOWN` at most, failing ones first. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from netcheck.controller import interconnect, readiness
from netcheck.controller.facts import GuestFacts
from netcheck.controller.interconnect import PathVerdict
from netcheck.controller.inventory import Host, Inventory
from netcheck.controller.model import Evaluation
from netcheck.controller.render.common import iso
from netcheck.controller.render.vms import vm_hosts
from netcheck.controller.spec import Spec

VMS_SHOWN = 50  # VM rows in the page's summary (the rest: in their role's details)
ROLE_VMS = 200  # VM rows in a VM role's details
PATHS_SHOWN = 100  # paths in an interaction's details
UNKNOWN_SHOWN = 20  # unknown fact names listed per VM
_RANK = {"blocks": 0, "unknown": 1, "warns": 2, "ready": 3}


def _state(prepare: Sequence[readiness.StepFinding]) -> tuple[str, readiness.StepFinding | None]:
    """A mode's state for one VM, and the step that makes it so (None: every step ok)."""
    for status, state in (("blocks", "blocks"), ("warns", "warns"), ("unknown", "unknown")):
        hit = next((p for p in prepare if p.status == status), None)
        if hit is not None:
            return state, hit
    return "ready", None


def _worst(states: Sequence[str]) -> str:
    return min(states, key=lambda s: _RANK[s], default="ready")


def _said(
    name: str, guest: str | None, facts: GuestFacts | None, host: Host | None, inv: str | None
) -> dict[str, Any]:
    """One of OS / boot: its value and where it came from (guest first, else inventory)."""
    if guest:
        detail = facts.source(name) if facts is not None else ""
        return {"value": guest, "source": "guest", "detail": detail, "inventory": inv}
    if host is not None and inv:
        return {"value": inv, "source": "inventory", "detail": "", "inventory": inv}
    return {"value": None, "source": None, "detail": "", "inventory": None}


def _counts(ev: Evaluation) -> dict[str, tuple[int, int]]:
    """host -> (its checks, those it runs itself), in one pass over the rows."""
    out: dict[str, list[int]] = {}
    for r in ev.rows:
        c = r.check
        src = out.setdefault(c.src_host, [0, 0])
        src[0] += 1
        src[1] += 1
        if c.spec.dst_host != c.src_host:
            out.setdefault(c.spec.dst_host, [0, 0])[0] += 1
    return {h: (n[0], n[1]) for h, n in out.items()}


def vm_row(
    spec: Spec,
    ev: Evaluation,
    inventory: Inventory | None,
    role: str,
    name: str,
    counts: tuple[int, int],
) -> dict[str, Any]:
    """One VM as the page shows it. ``counts``: its checks, and those it runs itself."""
    facts = ev.guest_facts.get(name)
    found = inventory.by_name(name) if inventory is not None else None
    host = found[1] if found is not None else None
    modes: list[dict[str, Any]] = []
    unknown: set[str] = set()
    for mode in spec.modes:
        if not readiness.is_migration(spec, mode):
            continue
        prepare = readiness.steps(spec, mode, facts)
        unknown |= {n for p in prepare if p.status == "unknown" for n in p.facts}
        state, step = _state(prepare)
        modes.append(
            {
                "mode": mode,
                "state": state,
                "blocks": sum(p.status == "blocks" for p in prepare),
                "warns": sum(p.status == "warns" for p in prepare),
                "step": None
                if step is None
                else {"step": step.step, "title": step.title, "text": step.text},
            }
        )
    notes: list[str] = []
    if host is not None:
        notes += readiness.effective(host, facts)[1]
        if facts is None:
            own, guest_side = counts
            notes.append(readiness.no_agent_note(host, own - guest_side, guest_side))
    elif facts is None:
        notes.append(f"{name}: no guest agent report: its facts are unknown")
    if facts is not None:
        stale = readiness.stale_note(facts, ev.generated_at, spec.policy)
        notes += [stale] if stale else []
    names = sorted(unknown)
    return {
        "role": role,
        "host": name,
        "guest_agent": facts is not None,
        "reported_at": iso(facts.reported_at) if facts is not None else None,
        "os": _said("os.name", facts.os_name if facts else None, facts, host,
                    host.os if host else None),
        "boot": _said("boot.matrix", facts.boot if facts else None, facts, host,
                      host.boot if host else None),
        "mismatch": any("the inventory says" in n for n in notes),
        "notes": notes[:5],
        "unknown_facts": names[:UNKNOWN_SHOWN],
        "unknown_total": len(names),
        "modes": modes,
        "state": _worst([str(m["state"]) for m in modes]),
    }  # fmt: skip


def vm_rows(
    spec: Spec, ev: Evaluation, inventory: Inventory | None, role: str | None = None
) -> list[dict[str, Any]]:
    """Every VM (of ``role`` when given), the worst first, then by name."""
    counts = _counts(ev)
    rows = [
        vm_row(spec, ev, inventory, r, h, counts.get(h, (0, 0)))
        for r, h in vm_hosts(ev)
        if role is None or r == role
    ]
    rows.sort(key=lambda v: (_RANK[v["state"]], v["host"]))
    return rows


def vms_block(rows: Sequence[dict[str, Any]], shown: int) -> dict[str, Any]:
    """The VMs' counts per state and the first ``shown`` rows."""
    return {
        "total": len(rows),
        "states": {s: sum(v["state"] == s for v in rows) for s in _RANK},
        "no_agent": sum(not v["guest_agent"] for v in rows),
        "modes": [m["mode"] for m in rows[0]["modes"]] if rows else [],
        "rows": list(rows[:shown]),
    }


def path_counts(paths: Sequence[PathVerdict]) -> dict[str, int]:
    """pass / fail / unknown, and the required paths that fail (what holds a gate)."""
    out = {v: sum(p.verdict == v for p in paths) for v in ("pass", "fail", "unknown")}
    out["total"] = len(paths)
    out["required_failing"] = sum(p.verdict == "fail" and p.required for p in paths)
    return out


def path_rows(paths: Sequence[PathVerdict], inter_id: int) -> dict[str, Any]:
    """An interaction's paths, failing first, each figure against its threshold."""
    mine = [p for p in paths if p.interaction == inter_id]
    order = {"fail": 0, "unknown": 1, "pass": 2}
    mine.sort(key=lambda p: (order[p.verdict], p.src_host, p.dst_host))
    return {
        **path_counts(mine),
        "rows": [interconnect.to_dict(p, iso) for p in mine[:PATHS_SHOWN]],
    }
