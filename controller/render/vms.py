"""The reports' VM readiness: every guest VM of the site, what its guest agent reported, and
each of HDM's prepare steps per migration mode (controller/readiness.py).

The VMs are the hosts of the VM roles (``prem_vm``, ``cloud_vm``) named by the site's
checks, and any host whose guest agent reported facts. A VM with no guest agent report says
so: its facts are all unknown, and its checks split into those the appliance side covers
(probed towards the VM) and those only a guest agent can run (from the VM).
"""

from __future__ import annotations

from typing import Any

from netcheck.controller.facts import GuestFacts
from netcheck.controller.gate import VM_ROLES
from netcheck.controller.model import Evaluation
from netcheck.controller.readiness import StepFinding, is_migration, step_dict, steps
from netcheck.controller.render.common import iso
from netcheck.controller.spec import Spec


def vm_hosts(ev: Evaluation) -> list[tuple[str, str]]:
    """(role, host) of every VM, by role and name."""
    found: set[tuple[str, str]] = set()
    for row in ev.rows:
        c = row.check
        if c.src_role in VM_ROLES:
            found.add((c.src_role, c.src_host))
        if c.spec.dst_role in VM_ROLES:
            found.add((c.spec.dst_role, c.spec.dst_host))
    roles = {a.host: a.role for a in ev.agents}
    known = {h for _, h in found}
    found |= {(roles.get(h, "?"), h) for h in ev.guest_facts if h not in known}
    return sorted(found)


def _unknown(prepare: tuple[StepFinding, ...]) -> set[str]:
    return {n for p in prepare if p.status == "unknown" for n in p.facts}


def vm_dict(spec: Spec, ev: Evaluation, role: str, host: str) -> dict[str, Any]:
    facts: GuestFacts | None = ev.guest_facts.get(host)
    own = [r for r in ev.rows if host in (r.check.src_host, r.check.spec.dst_host)]
    guest_side = sum(r.check.src_host == host for r in own)
    modes = []
    unknown: set[str] = set()
    for mode in spec.modes:
        if not is_migration(spec, mode):
            continue
        prepare = steps(spec, mode, facts)
        unknown |= _unknown(prepare)
        modes.append(
            {
                "mode": mode,
                "blocks": sum(p.status == "blocks" for p in prepare),
                "warns": sum(p.status == "warns" for p in prepare),
                "prepare": [step_dict(p) for p in prepare],
            }
        )
    return {
        "role": role,
        "host": host,
        "guest_agent": facts is not None,
        "reported_at": iso(facts.reported_at) if facts else None,
        "os": facts.os_name if facts else None,
        "boot": facts.boot if facts else None,
        "static_ip": facts.static_ip if facts else None,
        "unknown_facts": sorted(unknown),
        "checks_from_appliance_side": len(own) - guest_side,
        "checks_from_guest": guest_side,
        "facts": [
            {"name": f.name, "value": f.value, "source": f.source, "detail": f.detail}
            for f in (facts.facts.values() if facts else ())
        ],
        "modes": modes,
    }


def vm_dicts(spec: Spec, ev: Evaluation) -> list[dict[str, Any]]:
    return [vm_dict(spec, ev, role, host) for role, host in vm_hosts(ev)]


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def markdown_section(spec: Spec, ev: Evaluation) -> list[str]:
    """## VM readiness: one line per VM, then its steps that block or warn, per mode."""
    vms = vm_dicts(spec, ev)
    out = [f"## VM readiness ({len(vms)})", ""]
    if not vms:
        return [*out, "No guest VM in this site's checks."]
    out += ["| VM | Guest agent | OS | Boot | Static IP | " + " | ".join(
        m["mode"] for m in vms[0]["modes"]) + " |"]  # fmt: skip
    out += ["|" + "|".join("---" for _ in range(5 + len(vms[0]["modes"]))) + "|"]
    for v in vms:
        agent = iso_or(v["reported_at"]) if v["guest_agent"] else "**none**: facts unknown"
        cells = [v["host"], agent, v["os"] or "unknown", v["boot"] or "unknown"]
        cells.append("unknown" if v["static_ip"] is None else "yes" if v["static_ip"] else "no")
        for m in v["modes"]:
            cells.append(
                f"{m['blocks']} blocking" if m["blocks"] else f"{m['warns']} warnings"
                if m["warns"] else "ready" if v["guest_agent"] else "unknown"
            )  # fmt: skip
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    for v in vms:
        lines = []
        if not v["guest_agent"]:
            lines.append(
                f"- no guest agent report: {v['checks_from_appliance_side']} of its checks "
                f"are covered from the appliance side, {v['checks_from_guest']} need the guest "
                "agent; unknown: " + ", ".join(v["unknown_facts"])
            )
        for m in v["modes"]:
            for p in m["prepare"]:
                if p["status"] in ("blocks", "warns"):
                    what = "blocks" if p["status"] == "blocks" else "warns"
                    lines.append(
                        f"- {m['mode']}: step {p['step']} ({p['title']}) {what}: {p['text']}"
                    )
        if lines:
            out += ["", f"### {_cell(v['host'])}", "", *(_cell(x) for x in lines)]
    return out


def iso_or(text: str | None) -> str:
    return f"reported {text}" if text else "reported"
