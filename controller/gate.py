"""Go / no-go / undecided for one migration mode, and optionally one VM. Pure.

A mode needs every check of its interactions to pass: a failing or unknown (never tested,
stale) check blocks. With a VM, the checks of the site's infrastructure (no VM at either
end) and the VM's own, in both directions (its source or destination host is the VM:
interaction 15 to that guest, for instance) count, never another VM's; and the guest OS
matrix speaks: ``Not Supported`` blocks, ``Not Qualified(TICKET)`` and a qualified
note ("Need SI handling", "No GOSC") are warnings, which block only when
``policy.warnings_block`` is set. With a guest agent's facts (:mod:`.readiness`), the VM's
OS, boot mode and static IP are the guest's (the inventory's a cross-check: a mismatch
warns), and each of HDM's prepare steps that would fail blocks, one that needs something
warns; a VM with no guest agent says so, with which of its checks the appliance side still
covers. A VM is a host of the roles in :data:`VM_ROLES` that the
spec has; any other name is refused (:class:`GateError`: exit 2, HTTP 400).

Three answers, told apart: ``go``; ``no-go`` (something blocks: a failing or unknown check,
or the matrix); ``undecided`` (nothing to decide on: the mode has no checks here, or none of
them has been tested yet, or the VM's OS and boot mode are no row of the matrix, matched as
:func:`.spec.matrix_key` says; the reason names the closest rows). A check that already
fails outweighs an unknown OS: the answer is no-go whatever the matrix would say.

History (``policy.gate_min_passing_seconds``, 0 by default: off): a check must have been
passing for that long, by its history (:attr:`.model.Evaluation.history`: since when its
verdict is pass); a check passing for less, or whose history does not say since when,
keeps the gate from go: ``undecided`` when nothing else blocks ("passing for 40 s of the
required 300 s; flapped 3 times in the window"), its reason added to any other answer.

An interaction of the mode with no checks at all (no hosts of one of its roles in the
inventory) is a warning, not a blocker: before a migration there are often no cloud VMs
yet.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from netcheck.controller import readiness
from netcheck.controller.errors import Undecided
from netcheck.controller.interconnect import gate_findings
from netcheck.controller.inventory import Host, Inventory, unknown_to_matrix
from netcheck.controller.model import CheckRow, Decision, Evaluation, GateDecision, MatrixFinding
from netcheck.controller.spec import Spec

VM_ROLES: tuple[str, ...] = ("prem_vm", "cloud_vm")
COLUMN_TITLES: dict[str, str] = {
    "vcd_warm": "VCD WARM",
    "vcs_warm": "VCS WARM",
    "any_cold": "Any Cold",
    "static_ip_vcd_cold": "Guest Static IP for VCD Cold",
    "static_ip_vcd_warm": "Guest Static IP for VCD Warm",
}
# How many example diagnoses a reason line quotes per interaction.
_EXAMPLES = 1


class GateError(Undecided):
    """The question cannot be asked: unknown mode, unknown VM, or a host that is no VM."""


def _vm_host(spec: Spec, inventory: Inventory, vm: str) -> tuple[str, Host]:
    found = inventory.by_name(vm)
    vm_roles = [r for r in VM_ROLES if r in spec.roles]
    which = (
        f"VMs are the hosts of roles {', '.join(vm_roles)}"
        if vm_roles
        else f"the spec has no VM roles ({', '.join(VM_ROLES)})"
    )
    if found is None:
        raise GateError(f"unknown VM {vm!r}: no host of that name in {inventory.file} ({which})")
    role, host = found
    if role not in vm_roles:
        raise GateError(f"{vm!r} is a {role} host, not a guest VM ({which})")
    return role, host


def _in_scope(row: CheckRow, mode: str, vm: str | None) -> bool:
    """The mode's checks; with a VM, those of the site's infrastructure (no VM at either end)
    and the VM's own, both ways: never another VM's."""
    c = row.check
    if mode not in c.modes:
        return False
    if vm is None or vm in (c.src_host, c.spec.dst_host):
        return True
    return c.src_role not in VM_ROLES and c.spec.dst_role not in VM_ROLES


def _matrix(
    spec: Spec, mode: str, host: Host
) -> tuple[list[MatrixFinding], list[str], list[str], str | None]:
    """(findings, blocking reasons, warnings, why undecided) of the matrix for one VM."""
    m = spec.modes[mode]
    if host.os is None or host.boot is None:
        return [], [], [f"{host.name}: OS unknown, matrix not checked"], None
    row = spec.matrix_row(host.os, host.boot)
    if row is None:
        return [], [], [], unknown_to_matrix(spec, host)
    columns = list(m.matrix_columns)
    if host.static_ip and m.static_ip_column is not None:
        columns.append(m.static_ip_column)
    findings: list[MatrixFinding] = []
    blocking: list[str] = []
    warnings: list[str] = []
    warn_blocks = spec.policy.warnings_block
    for col in columns:
        s = row.support[col]
        where = f"{row.os} {row.boot}: {{}} for {mode} ({COLUMN_TITLES[col]})"
        if s.status == "not_supported":
            blocking.append(where.format("Not Supported"))
            findings.append(MatrixFinding(col, s.status, s.text, True))
        elif s.status == "not_qualified":
            warnings.append(where.format(f"Not Qualified, ticket {s.ticket}"))
            findings.append(MatrixFinding(col, s.status, s.text, warn_blocks))
        elif s.note:
            warnings.append(where.format(f"Qualified with a note: {s.note}"))
            findings.append(MatrixFinding(col, s.status, s.text, warn_blocks))
        else:
            findings.append(MatrixFinding(col, s.status, s.text, False))
    return findings, blocking, warnings, None


def _step(p: readiness.StepFinding) -> str:
    what = {"blocks": "would fail", "warns": "warning", "unknown": "unknown"}[p.status]
    return f"prepare step {p.step} ({p.title}) {what}: {p.text}"


def _check_reasons(spec: Spec, blocking: list[CheckRow]) -> list[str]:
    groups: dict[int, list[CheckRow]] = defaultdict(list)
    for row in blocking:
        groups[row.check.spec.interaction].append(row)
    out = []
    for ident in sorted(groups):
        rows = groups[ident]
        failed = sum(r.verdict == "fail" for r in rows)
        unknown = len(rows) - failed
        counts = ", ".join(
            t
            for t in (
                f"{failed} failing" if failed else "",
                f"{unknown} unknown" if unknown else "",
            )
            if t
        )
        ex = "; ".join(
            f"{r.check.src_host} -> {r.check.spec.dst_host}:{r.check.spec.port}: {r.diagnosis}"
            for r in sorted(rows, key=lambda r: r.verdict != "fail")[:_EXAMPLES]
        )
        title = spec.interaction(ident).title
        out.append(f"interaction {ident} ({title}): {counts} (e.g. {ex})")
    return out


def _seconds(s: float) -> str:
    return f"{s:.0f} s"


def _young_reasons(spec: Spec, ev: Evaluation, rows: list[CheckRow]) -> list[str]:
    """Passing checks that have not been passing for ``gate_min_passing_seconds``, grouped
    by interaction like the blocking ones."""
    need = spec.policy.gate_min_passing_seconds
    if need <= 0:
        return []
    groups: dict[int, list[str]] = defaultdict(list)
    for row in rows:
        if row.verdict != "pass":
            continue
        h = ev.history.get(row.check.spec.check_id)
        c = row.check
        what = f"{c.src_host} -> {c.spec.dst_host}:{c.spec.port}"
        if h is None or h.verdict != "pass":
            groups[c.spec.interaction].append(
                f"{what} passes, but its history does not say since when "
                f"(required: passing for {_seconds(need)})"
            )
            continue
        passing = ev.generated_at - h.since
        if passing >= need:
            continue
        flaps = f"; flapped {h.flaps} times in the window" if h.flaps else ""
        groups[c.spec.interaction].append(
            f"{what} passing for {_seconds(max(passing, 0.0))} of the required "
            f"{_seconds(need)}{flaps}"
        )
    out = []
    for ident in sorted(groups):
        texts = groups[ident]
        title = spec.interaction(ident).title
        many = f"{len(texts)} checks not yet passing long enough" if len(texts) > 1 else ""
        ex = f"{many} (e.g. {texts[0]})" if many else texts[0]
        out.append(f"interaction {ident} ({title}): {ex}")
    return out


def gate(
    spec: Spec,
    inventory: Inventory,
    evaluation: Evaluation,
    mode: str,
    vm: str | None = None,
) -> GateDecision:
    """Go / no-go for ``mode`` (and ``vm``, a prem_vm or cloud_vm host name)."""
    if mode not in spec.modes:
        raise GateError(f"unknown mode {mode!r} (modes are: {', '.join(spec.modes)})")
    vm_host = _vm_host(spec, inventory, vm) if vm is not None else None
    rows = [r for r in evaluation.rows if _in_scope(r, mode, vm)]
    blocking = [r for r in rows if r.verdict != "pass"]
    reasons = _check_reasons(spec, blocking)
    failing = any(r.verdict == "fail" for r in rows)
    warnings: list[str] = []
    checked = {r.check.spec.interaction for r in rows}
    for ident in spec.modes[mode].interactions:
        inter = spec.interaction(ident)
        ends = {inter.source, inter.destination}
        if ident in checked or (vm_host and ends & (set(VM_ROLES) - {vm_host[0]})):
            continue  # checked, or another VM role's interaction: not this VM's gate
            continue
        missing = [r for r in (inter.source, inter.destination) if not inventory.of_role(r)]
        why = f"no {' or '.join(missing)} hosts in the inventory" if missing else "no checks"
        warnings.append(f"interaction {ident} ({inter.title}) not checked: {why}")
    findings: list[MatrixFinding] = []
    unknown_os: str | None = None
    prepare: tuple[readiness.StepFinding, ...] = ()
    if vm_host is not None:
        facts = evaluation.guest_facts.get(vm_host[1].name)
        judged, cross = readiness.effective(vm_host[1], facts)
        found, blocks, warns, unknown_os = _matrix(spec, mode, judged)
        prepare = readiness.steps(spec, mode, facts)
        blocks += [_step(p) for p in prepare if p.status == "blocks"]
        warns = [*cross, *warns, *(_step(p) for p in prepare if p.status == "warns")]
        if facts is None:
            own = [r for r in rows if vm in (r.check.src_host, r.check.spec.dst_host)]
            guest_side = sum(r.check.src_host == vm for r in own)
            warns.append(readiness.no_agent_note(vm_host[1], len(own) - guest_side, guest_side))
        else:
            warns += [_step(p) for p in prepare if p.status == "unknown" and p.facts]
            stale = readiness.stale_note(facts, evaluation.generated_at, spec.policy)
            warns += [stale] if stale else []
        findings, reasons, warnings = found, [*blocks, *reasons], [*warns, *warnings]
    # "interconnect qualified" (controller.interconnect): the mode's measured data paths;
    # with a VM, the infrastructure's paths and the VM's own.
    paths = [
        p
        for p in evaluation.paths
        if vm is None
        or vm in (p.src_host, p.dst_host)
        or (p.src_role not in VM_ROLES and p.dst_role not in VM_ROLES)
    ]
    path_blocks, path_warns = gate_findings(
        spec.qualification, paths, spec.modes[mode].interactions
    )
    reasons, warnings = [*reasons, *path_blocks], [*warnings, *path_warns]
    mode_ids = set(spec.modes[mode].interactions)
    path_failed = any(
        p.verdict == "fail" and p.required and p.interaction in mode_ids for p in paths
    )
    if spec.policy.warnings_block:
        reasons = [*reasons, *(f"warning (policy: warnings block): {w}" for w in warnings)]
    decision: Decision
    if not rows:
        decision = "undecided"
        first = [f"no checks of mode {mode!r} in this inventory"]
        reasons = [*first, *([unknown_os] if unknown_os else []), *reasons]
    elif all(r.cause == "not_tested" for r in rows):
        decision = "undecided"
        first = [f"none of the {len(rows)} checks of mode {mode!r} tested yet"]
        reasons = [*first, *([unknown_os] if unknown_os else []), *reasons]
    elif unknown_os is not None and not failing:
        decision = "undecided"
        reasons = [unknown_os, *reasons]
    else:
        decision = "no-go" if reasons else "go"
        if unknown_os is not None:
            warnings = [unknown_os, *warnings]
    if path_failed and decision == "undecided":
        decision = "no-go"  # a measured path failure is known, like a failing check
    young = _young_reasons(spec, evaluation, rows)
    if young:
        decision = "undecided" if decision == "go" else decision
        reasons = [*reasons, *young]
    return GateDecision(
        mode=mode,
        decision=decision,
        blocking=tuple(blocking),
        reasons=tuple(reasons),
        warnings=tuple(warnings),
        vm=vm,
        matrix=tuple(findings),
        prepare=prepare,
    )


def sent_by_counts(ev: Evaluation, mode: str, vm: str | None = None) -> dict[str, int]:
    """Identity -> how many of the gate's results it sent (its evidence, by sender).

    The rows are the gate's (the mode's, or the VM's own as :func:`gate` takes them).
    ``""``: results stored before identities were recorded.
    """
    counts: dict[str, int] = defaultdict(int)
    for row in ev.rows:
        c = row.check
        if row.result is None or not _in_scope(row, mode, vm):
            continue
        counts[ev.sent_by.get(c.spec.check_id, "")] += 1
    return dict(sorted(counts.items()))


def decision_to_dict(d: GateDecision, ev: Evaluation | None = None) -> dict[str, Any]:
    """A gate decision as JSON-ready data (the API's and the JSON report's shape).

    With the evaluation it was made from, it also says who sent the results: ``sent_by`` on
    each blocking check (None: no result, or one stored before identities were recorded),
    and ``sent_by`` at the top, identity -> number of the mode's results it sent.
    """
    sent_by = ev.sent_by if ev is not None else {}
    out: dict[str, Any] = {
        "mode": d.mode,
        "vm": d.vm,
        "decision": d.decision,
        "blocking": [
            {
                "check_id": r.check.spec.check_id,
                "interaction": r.check.spec.interaction,
                "src_role": r.check.src_role,
                "src_host": r.check.src_host,
                "dst_role": r.check.spec.dst_role,
                "dst_host": r.check.spec.dst_host,
                "dst_address": r.check.spec.dst_address,
                "port": r.check.spec.port,
                "verdict": r.verdict,
                "cause": r.cause,
                "diagnosis": r.diagnosis,
                "sent_by": sent_by.get(r.check.spec.check_id) if r.result else None,
            }
            for r in d.blocking
        ],
        "reasons": list(d.reasons),
        "warnings": list(d.warnings),
        "matrix": [
            {"column": f.column, "status": f.status, "text": f.text, "blocks": f.blocks}
            for f in d.matrix
        ],
        "prepare": [readiness.step_dict(p) for p in d.prepare],
    }
    if ev is not None:
        out["sent_by"] = sent_by_counts(ev, d.mode, d.vm)
    return out
