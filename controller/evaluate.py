"""Judge what the agents reported against what the spec expects. Pure: no I/O, no clock.

``evaluate(spec, expected, observed, now)`` turns the newest result of every expected check
(:class:`~controller.expand.Expected`, from spec x inventory), together with what the
destination's own agent says (its stand-in listeners and the peers it saw, all in one
:class:`~controller.model.Observed`), into one :class:`~controller.model.CheckRow` with a
verdict, a stable cause and a diagnosis in plain words. It reads both ends of a path: a
"connection refused" is only called a firewall's reject when the destination agent was
listening on that port (or a raw probe saw the reset come from another address than the
destination).

NAT: when the destination agent saw the connection arrive from an address that is not the
source's, and never from the source's own address, the check *passes* with cause ``nat``
and a diagnosis: an HDM appliance-to-appliance path through NAT usually works, so it is a
finding to read, not a blocker. An ``expect: closed`` check that connected always fails
(``unexpected_open``), NAT or not.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from netcheck.agent.wire import ListenerStatus, ProbeResult
from netcheck.controller.expand import Expected, ExpectedCheck
from netcheck.controller.model import Cause, CheckRow, Evaluation, Observed, Rollup, Verdict
from netcheck.controller.spec import Spec

# A listener whose `since` is at most this much after the probe's start was up in time
# (the agent stamps `since` once the socket listens, a moment after it accepts connections).
LISTEN_TOLERANCE_S = 0.5
# Causes that say the path was not really tested: verdict unknown, not fail.
UNTESTED: frozenset[Cause] = frozenset({"listener_down"})

SERVICE_WORDS: dict[str, str] = {
    "tcp": "a TCP connection",
    "ssh": "an SSH banner",
    "tls": "a TLS handshake",
    "https": "HTTPS",
    "vsphere": "the vSphere API on /sdk",
    "docker": "the Docker API over TLS",
    "authd": "the VMware authd '220' banner",
    "iscsi": "an iSCSI target",
}


@dataclass(frozen=True)
class _Context:
    """What the other end says, indexed for one evaluation."""

    freshness: float
    now: float
    listeners: Mapping[str, Mapping[int, ListenerStatus]]  # host -> port -> status
    peers: Mapping[tuple[str, int], frozenset[str]]  # (host, port) -> source addresses
    expected_sources: Mapping[tuple[str, int], frozenset[str]]  # (host, port) -> src addrs
    agent_hosts: frozenset[str]
    agent_roles: frozenset[str]  # roles that can hold an agent


def newest_by_check(results: Iterable[ProbeResult]) -> dict[str, ProbeResult]:
    """The newest result (by ``started_at``) for each check id."""
    out: dict[str, ProbeResult] = {}
    for r in results:
        old = out.get(r.check_id)
        if old is None or r.started_at >= old.started_at:
            out[r.check_id] = r
    return out


def _where(check: ExpectedCheck) -> str:
    return f"{check.spec.dst_address}:{check.spec.port}"


def _ms(latency: float | None) -> str:
    return f" in {latency * 1000:.1f} ms" if latency is not None else ""


def _not_tested(check: ExpectedCheck, ctx: _Context) -> tuple[Verdict, Cause, str]:
    if check.src_role not in ctx.agent_roles:
        why = f"role {check.src_role} cannot run an agent, so nothing probes this path"
    elif check.src_host not in ctx.agent_hosts:
        why = f"no agent has registered on {check.src_host}"
    else:
        why = f"the agent on {check.src_host} has not reported this check yet"
    return "unknown", "not_tested", f"not tested: {why}"


def _open(check: ExpectedCheck, r: ProbeResult, ctx: _Context) -> tuple[Verdict, Cause, str]:
    if check.spec.expect == "closed":
        return (
            "fail",
            "unexpected_open",
            f"expected closed, but {check.src_host} connected to {_where(check)}{_ms(r.latency_s)}",
        )
    sc = r.service_check
    wanted = SERVICE_WORDS.get(check.spec.service, check.spec.service)
    if sc is not None and sc.outcome == "mismatch":
        got = sc.detail or "something else"
        return "fail", "wrong_service", f"wrong service: expected {wanted}, got {got}"
    seen = ctx.peers.get((check.spec.dst_host, check.spec.port), frozenset())
    others = seen - ctx.expected_sources.get((check.spec.dst_host, check.spec.port), frozenset())
    if check.spec.dst_host in ctx.agent_hosts and others and check.src_address not in seen:
        addrs = ", ".join(sorted(others))
        return (
            "pass",
            "nat",
            f"open{_ms(r.latency_s)}, but the destination agent saw this connection arrive "
            f"from {addrs}, not {check.src_address} (NAT)",
        )
    text = f"open{_ms(r.latency_s)}"
    if sc is None or check.spec.service == "tcp":
        pass
    elif sc.outcome == "ok":
        text += f"; {wanted} answered" + (f" ({sc.detail})" if sc.detail else "")
    else:
        reason = f": {sc.detail}" if sc.detail else ""
        text += f"; the {check.spec.service} check was {sc.outcome}{reason}, the port alone passes"
    return "pass", "ok", text


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(t))


def _listener_down(
    check: ExpectedCheck, r: ProbeResult, status: ListenerStatus
) -> tuple[Cause, str] | None:
    """A reset explained by the stand-in not being up when probed (its own timeline says so)."""
    where = f"the stand-in on {check.spec.dst_host}:{check.spec.port}"
    if status.state == "closed" and status.since <= r.started_at:
        when = f"it stopped at {_clock(status.since)}"
    elif status.state == "listening" and status.since > r.started_at + LISTEN_TOLERANCE_S:
        when = f"it started at {_clock(status.since)}"
    else:
        return None
    return (
        "listener_down",
        f"not tested: {where} was not up when probed at {_clock(r.started_at)} "
        f"({when}); run the probe again",
    )


def _refused(check: ExpectedCheck, r: ProbeResult, ctx: _Context) -> tuple[Cause, str]:
    port = check.spec.port
    status = ctx.listeners.get(check.spec.dst_host, {}).get(port)
    if r.responder and r.responder != check.spec.dst_address:
        return (
            "rejected",
            f"rejected by a firewall: the reset came from {r.responder}, "
            f"not from {check.spec.dst_address}",
        )
    if status is not None:
        down = _listener_down(check, r, status)
        if down is not None:
            return down
    if status is not None and status.state in ("listening", "occupied", "closed"):
        if status.state == "listening":
            held = f"the destination agent was listening on {port}"
        elif status.state == "closed":
            held = f"the destination agent was listening on {port} (until {_clock(status.since)})"
        else:
            held = f"port {port} on the destination was held by {status.owner or 'a service'}"
        return "rejected", f"rejected by a firewall: reset while {held}"
    if status is not None:
        why = f"{status.state}" + (f": {status.error}" if status.error else "")
        return (
            "nothing_listening",
            f"nothing listening on the destination: the agent on {check.spec.dst_host} could not "
            f"hold port {port} ({why})",
        )
    if r.rst_from_firewall is True:
        return (
            "rejected",
            "rejected by a firewall: the reset came from fewer hops away than the destination",
        )
    if r.rst_from_firewall is False:
        return (
            "nothing_listening",
            "nothing listening: the destination itself answered with a reset",
        )
    if r.responder == check.spec.dst_address:
        return "nothing_listening", "nothing listening on the destination: it sent the reset itself"
    if check.spec.dst_host in ctx.listeners:
        return (
            "nothing_listening",
            f"nothing listening on the destination: the agent on {check.spec.dst_host} does not "
            f"hold port {port}",
        )
    return (
        "refused",
        "refused: a reset; no agent on the destination to tell a firewall from a closed port",
    )


def _not_open(check: ExpectedCheck, r: ProbeResult, ctx: _Context) -> tuple[Cause, str]:
    tries = f"after {r.attempts} {'try' if r.attempts == 1 else 'tries'}"
    if r.state == "refused":
        return _refused(check, r, ctx)
    if r.state == "filtered":
        text = f"dropped: no answer from {_where(check)} {tries}"
        if r.last_hop:
            text += f"; last hop that answered {r.last_hop}"
        elif r.mode == "syn":
            text += "; no hop answered a traceroute"
        return "dropped", text
    if r.state == "unreachable":
        kind = r.error or "ICMP host unreachable"
        frm = f" from {r.responder}" if r.responder else ""
        return "unreachable", f"unreachable: {kind}{frm}"
    if r.state == "prohibited":
        frm = f" from {r.responder}" if r.responder else ""
        return "prohibited", f"prohibited by a firewall (ICMP administratively prohibited{frm})"
    return "error", f"the probe failed on {check.src_host}: {r.error or 'unknown error'}"


def judge(check: ExpectedCheck, r: ProbeResult | None, ctx: _Context) -> CheckRow:
    """The verdict of one expected check given its newest result."""
    if r is None:
        verdict, cause, text = _not_tested(check, ctx)
        return CheckRow(check, verdict, cause, text, None)
    age = ctx.now - r.started_at
    if age > ctx.freshness:
        text = (
            f"stale: the newest result is {age:.0f} s old (limit {ctx.freshness:.0f} s); "
            f"it was {r.state}"
        )
        return CheckRow(check, "unknown", "stale", text, r)
    if r.state == "open":
        verdict, cause, text = _open(check, r, ctx)
        return CheckRow(check, verdict, cause, text, r)
    if check.spec.expect == "closed" and r.state != "error":
        return CheckRow(check, "pass", "ok", f"closed as expected ({r.state})", r)
    cause, text = _not_open(check, r, ctx)
    return CheckRow(check, "unknown" if cause in UNTESTED else "fail", cause, text, r)


def _rollups(
    rows: Sequence[CheckRow], key_of: Mapping[str, tuple[str, str, str, str]], by: str
) -> tuple[Rollup, ...]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"pass": 0, "fail": 0, "unknown": 0})
    order: list[str] = []
    for row in rows:
        k = str(row.check.spec.interaction) if by == "interaction" else _pair(row.check)
        if k not in counts:
            order.append(k)
        counts[k][row.verdict] += 1
    out = []
    for k in order:
        title, src, dst, _ = key_of[k]
        c = counts[k]
        out.append(Rollup(k, title, src, dst, c["pass"], c["fail"], c["unknown"]))
    return tuple(out)


def _pair(c: ExpectedCheck) -> str:
    return f"{c.src_role}>{c.spec.dst_role}"


def evaluate(spec: Spec, expected: Expected, observed: Observed, now: float) -> Evaluation:
    """Every expected check with its verdict, plus roll-ups and the unexpected results.

    ``expected``: the site's checks (:func:`~netcheck.controller.expand.expected`);
    ``observed``: what the agents reported (:meth:`~netcheck.controller.store.Store.snapshot`).
    A peer counts for NAT detection only when seen within the freshness window.
    """
    checks = expected.checks
    newest = newest_by_check(observed.results)
    expected_sources: dict[tuple[str, int], set[str]] = defaultdict(set)
    for c in checks:
        expected_sources[(c.spec.dst_host, c.spec.port)].add(c.src_address)
    fresh_after = now - spec.policy.freshness_seconds
    seen: dict[tuple[str, int], set[str]] = defaultdict(set)
    for host, ps in observed.peers.items():
        for p in ps:
            if p.at >= fresh_after:
                seen[(host, p.port)].add(p.src_address)
    ctx = _Context(
        freshness=spec.policy.freshness_seconds,
        now=now,
        listeners={h: {s.port: s for s in ls} for h, ls in observed.listeners.items()},
        peers={k: frozenset(v) for k, v in seen.items()},
        expected_sources={k: frozenset(v) for k, v in expected_sources.items()},
        agent_hosts=frozenset(a.host for a in observed.agents),
        agent_roles=frozenset(n for n, r in spec.roles.items() if r.agent),
    )
    rows = tuple(judge(c, newest.get(c.spec.check_id), ctx) for c in checks)
    known = {c.spec.check_id for c in checks}
    unexpected = tuple(
        sorted((r for cid, r in newest.items() if cid not in known), key=lambda r: r.check_id)
    )
    keys: dict[str, tuple[str, str, str, str]] = {}
    for inter in spec.interactions:
        keys[str(inter.id)] = (inter.title, inter.source, inter.destination, "")
    for c in checks:
        pair = _pair(c)
        if pair not in keys:
            src_name = spec.roles[c.src_role].name
            dst_name = spec.roles[c.spec.dst_role].name
            keys[pair] = (f"{src_name} to {dst_name}", c.src_role, c.spec.dst_role, "")
    return Evaluation(
        generated_at=now,
        site=expected.site,
        rows=rows,
        by_interaction=_rollups(rows, keys, "interaction"),
        by_role_pair=_rollups(rows, keys, "pair"),
        unexpected=unexpected,
        listeners={h: tuple(ls) for h, ls in observed.listeners.items()},
        peers=tuple(p for ps in observed.peers.values() for p in ps),
        agents=tuple(observed.agents),
        sent_by=observed.sent_by,
    )
