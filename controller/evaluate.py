"""Judge what the agents reported against what the spec expects. Pure: no I/O, no clock.

``evaluate(spec, expected, observed, now)`` turns the newest result of every expected check
(:class:`~controller.expand.Expected`, from spec x inventory), together with what the
destination's own agent says (its stand-in listeners and the peers it saw, all in one
:class:`~controller.model.Observed`), into one :class:`~controller.model.CheckRow` with a
verdict, a stable cause and a diagnosis in plain words. It reads both ends of a path: a
"connection refused" is only called a firewall's reject when the destination agent was
listening on that port (or a raw probe saw the reset come from another address than the
destination).

Diagnosis as data (:class:`~controller.model.CheckRow` ``side``, ``device``, ``seen_from``):
the destination agent's interface capture (peers seen with ``how="syn"``) tells a SYN that
never reached the host (dropped in the network, at or just past the last hop that answered)
from one that reached it and got no answer (the host's own firewall); a reset while the
agent listened is the host's when its SYN arrived (or the reset's TTL matches the
destination), a device's on the path when the SYN never arrived (or the TTL says fewer
hops): forged in the destination's name, so that device has no address, only a hop count.
ICMP errors name their sender. "Never arrived" needs the destination to have reported after
the probe; without that evidence (an old agent, no capture) the side stays unknown. Device
names come from the inventory's ``network:`` section (:attr:`Expected.devices`).

NAT: when the destination agent saw the connection (or its SYN) arrive from an address that
is not the source's, and never from the source's own address, on this port or, when this
port saw nothing, on any port this source is expected on (a raw probe completes one real
connection per host pair), the check *passes* with cause ``nat`` and a diagnosis: an HDM
appliance-to-appliance path through NAT usually works, so it is a finding to read, not a
blocker. An ``expect: closed`` check that connected always fails (``unexpected_open``), NAT
or not.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from netcheck.agent.wire import ListenerStatus, PeerSeen, ProbeResult
from netcheck.controller import interconnect
from netcheck.controller.expand import Expected, ExpectedCheck
from netcheck.controller.model import (
    Cause,
    CheckHistory,
    CheckRow,
    Device,
    Evaluation,
    Observed,
    Rollup,
    Side,
    Verdict,
)
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
    # (host, port) -> the SYNs its capture saw (fresh); hosts whose capture reported any.
    syns: Mapping[tuple[str, int], tuple[PeerSeen, ...]] = field(default_factory=dict)
    capture_hosts: frozenset[str] = frozenset()
    # host -> every (port, source address) it saw, accepted or SYN (fresh): NAT per host pair.
    seen_at: Mapping[str, frozenset[tuple[int, str]]] = field(default_factory=dict)
    # host -> up to when its agent's peers are all reported (AgentSeen.peers_until)
    peers_until: Mapping[str, float] = field(default_factory=dict)
    names: Mapping[str, str] = field(default_factory=dict)  # device address -> name
    probe_timeout: float = 0.0
    # check id -> its history in brief (the last change of its state: _stand_in_since)
    history: Mapping[str, CheckHistory] = field(default_factory=dict)


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


def _nat(check: ExpectedCheck, ctx: _Context) -> tuple[str, ...]:
    """The addresses the destination saw this source arrive from instead of its own (NAT).

    On this port first: others seen there and never the source's own address. When nothing
    at all was seen on this port (a raw probe completes one connection per host pair, on the
    first open port), the host pair: the destination never saw the source's address on any
    port, but saw others on ports this source is expected on.
    """
    dst, port = check.spec.dst_host, check.spec.port
    if dst not in ctx.agent_hosts:
        return ()
    seen = ctx.peers.get((dst, port), frozenset())
    if check.src_address in seen:
        return ()
    here = seen - ctx.expected_sources.get((dst, port), frozenset())
    if here:
        return tuple(sorted(here))
    pairs = ctx.seen_at.get(dst, frozenset())
    if any(a == check.src_address for _, a in pairs):
        return ()
    others = {
        a
        for p, a in pairs
        if check.src_address in ctx.expected_sources.get((dst, p), frozenset())
        and a not in ctx.expected_sources.get((dst, p), frozenset())
    }
    return tuple(sorted(others))


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
    nat = _nat(check, ctx)
    if nat:
        return (
            "pass",
            "nat",
            f"open{_ms(r.latency_s)}, but the destination agent saw this connection arrive "
            f"from {', '.join(nat)}, not {check.src_address} (NAT)",
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


def initial_ttl(ttl: int) -> int:
    """The TTL a packet most likely left its sender with (the next common default)."""
    return next(t for t in (32, 64, 128, 255) if ttl <= t)


def hops_of_ttl(ttl: int | None) -> int | None:
    """Hops a SYN travelled, from the TTL it arrived with (None when not known). A SYN that
    arrived with a TTL of 32 or less may be one of a traceroute's TTL-limited probes (the
    record keeps the latest SYN): no distance is read from it."""
    if ttl is None or ttl <= 32:
        return None
    return initial_ttl(ttl) - ttl + 1


@dataclass(frozen=True)
class _Finding:
    """The diagnosis of a check that did not connect: a cause, words, and the data."""

    cause: Cause
    text: str
    side: Side | None = None
    device: Device | None = None
    seen_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Arrival:
    """What the destination's capture says about this check's SYN.

    ``state``: "arrived" (a SYN from the source's address), "nat" (SYNs only from other
    addresses), "missing" (the destination captures, its peers are reported up to past the
    probe, and it saw no SYN for it), "unknown" (no capture there, or its peers are not known
    that far: a batch built before the SYN arrived says nothing of it).
    """

    state: Literal["arrived", "nat", "missing", "unknown"]
    hops: int | None = None  # the destination's distance, from the SYN's TTL
    seen_from: tuple[str, ...] = ()


def _arrival(check: ExpectedCheck, r: ProbeResult, ctx: _Context) -> _Arrival:
    key = (check.spec.dst_host, check.spec.port)
    until = ctx.peers_until.get(check.spec.dst_host)
    covered = (
        check.spec.dst_host in ctx.capture_hosts
        and until is not None
        and until >= r.started_at + ctx.probe_timeout
    )
    since = r.started_at - LISTEN_TOLERANCE_S
    if not covered:
        since = _stand_in_since(check, r, ctx, since)
    syns = [p for p in ctx.syns.get(key, ()) if p.at >= since]
    mine = [p for p in syns if p.src_address == check.src_address]
    if mine:
        return _Arrival("arrived", hops_of_ttl(max(mine, key=lambda p: p.at).ttl))
    expected = ctx.expected_sources.get(key, frozenset())
    others = tuple(sorted({p.src_address for p in syns} - expected))
    if others:
        hops = hops_of_ttl(next(p.ttl for p in syns if p.src_address == others[0]))
        return _Arrival("nat", hops, others)
    # Silence is evidence only once the destination's capture is reported past the probe
    # (not merely a later batch: one built before the SYN arrived says nothing of it).
    return _Arrival("missing" if covered else "unknown")


def _stand_in_since(check: ExpectedCheck, r: ProbeResult, ctx: _Context, since: float) -> float:
    """Before the destination reports its capture past the newest probe (up to a round
    later), the SYNs of the probes before it stand in, as far back as they saw the same: the
    check's verdict, state and cause unchanged since (its history's last change), so the
    diagnosis does not flip each round. Without history, none stand in.

    What this cannot tell: a drop that moved from the host to the network with the state
    unchanged (still ``filtered``) reads "host" again between the first probe whose silence
    is reported and its next, until the older SYNs leave the freshness window."""
    h = ctx.history.get(check.spec.check_id)
    if h is None or h.last_change > r.started_at:
        return since
    return min(since, h.last_change - LISTEN_TOLERANCE_S)


def _device(
    address: str | None,
    hops: int | None,
    check: ExpectedCheck,
    ctx: _Context,
    at: Literal["at", "after"] = "at",
) -> Device:
    name = ""
    if address is not None:
        name = ctx.names.get(address, "")
        if not name and address == check.spec.dst_address:
            name = check.spec.dst_host
    return Device(address, hops, name, at)


def device_words(d: Device) -> str:
    """``198.18.1.1 (core-fw, hop 1)``, or for a forged answer ``a device 2 hops from the
    source``."""
    hop = f"hop {d.hops}" if d.hops is not None else ""
    if d.address is None:
        if d.hops is None:
            return "a device on the path"
        return f"a device {d.hops} {'hop' if d.hops == 1 else 'hops'} from the source"
    extra = ", ".join(x for x in (d.name, hop) if x)
    return d.address + (f" ({extra})" if extra else "")


def _forged(check: ExpectedCheck, r: ProbeResult, ctx: _Context, dst_hops: int | None) -> Device:
    hops = r.responder_hops
    if hops is not None and dst_hops is not None and hops >= dst_hops:
        hops = None  # the reply's distance contradicts a device before the destination
    return _device(None, hops, check, ctx)


def _forged_words(dev: Device) -> str:
    return f"reset forged by {device_words(dev)}, in the name of the destination"


def _refused(check: ExpectedCheck, r: ProbeResult, ctx: _Context) -> _Finding:
    port = check.spec.port
    dst = check.spec.dst_address
    status = ctx.listeners.get(check.spec.dst_host, {}).get(port)
    if r.responder and r.responder != dst:
        dev = _device(r.responder, r.responder_hops, check, ctx)
        return _Finding(
            "rejected",
            f"rejected by a firewall in the network: the reset came from {device_words(dev)}, "
            f"not from {dst}",
            "network",
            dev,
        )
    if status is not None:
        down = _listener_down(check, r, status)
        if down is not None:
            return _Finding(*down)
    arrival = _arrival(check, r, ctx)
    host = _device(dst, arrival.hops or r.responder_hops, check, ctx)
    if status is not None and status.state in ("listening", "occupied", "closed"):
        if status.state == "listening":
            held = f"the destination agent was listening on {port}"
        elif status.state == "closed":
            held = f"the destination agent was listening on {port} (until {_clock(status.since)})"
        else:
            held = f"port {port} on the destination was held by {status.owner or 'a service'}"
        if arrival.state == "missing" or r.rst_from_firewall is True:
            dev = _forged(check, r, ctx, arrival.hops)
            never = "; its interface never saw the SYN" if arrival.state == "missing" else ""
            return _Finding(
                "rejected",
                f"rejected by a firewall in the network: {_forged_words(dev)}, while {held}{never}",
                "network",
                dev,
            )
        if arrival.state in ("arrived", "nat") or r.rst_from_firewall is False:
            saw = (
                "; its interface saw the SYN arrive"
                if arrival.state in ("arrived", "nat")
                else "; the reset came from the destination's own distance"
            )
            return _Finding(
                "rejected",
                f"rejected by the destination's own firewall: reset while {held}{saw}",
                "host",
                host,
                arrival.seen_from,
            )
        return _Finding("rejected", f"rejected by a firewall: reset while {held}")
    if status is not None:
        why = f"{status.state}" + (f": {status.error}" if status.error else "")
        return _Finding(
            "nothing_listening",
            f"nothing listening on the destination: the agent on {check.spec.dst_host} could not "
            f"hold port {port} ({why})",
            "host",
            host,
        )
    if r.rst_from_firewall is True:
        dev = _forged(check, r, ctx, arrival.hops)
        return _Finding(
            "rejected",
            f"rejected by a firewall in the network: {_forged_words(dev)} (it came from fewer "
            "hops away than the destination)",
            "network",
            dev,
        )
    if r.rst_from_firewall is False:
        return _Finding(
            "nothing_listening",
            "nothing listening: the destination itself answered with a reset",
            "host",
            host,
        )
    if r.responder == dst:
        return _Finding(
            "nothing_listening",
            "nothing listening on the destination: it sent the reset itself",
            "host",
            host,
        )
    if check.spec.dst_host in ctx.listeners:
        return _Finding(
            "nothing_listening",
            f"nothing listening on the destination: the agent on {check.spec.dst_host} does not "
            f"hold port {port}",
            "host",
            host,
        )
    return _Finding(
        "refused",
        "refused: a reset; no agent on the destination to tell a firewall from a closed port",
    )


def _dropped(check: ExpectedCheck, r: ProbeResult, ctx: _Context) -> _Finding:
    tries = f"after {r.attempts} {'try' if r.attempts == 1 else 'tries'}"
    hop = (
        _device(r.last_hop, r.last_hop_hops, check, ctx, "after")
        if r.last_hop and r.last_hop != check.spec.dst_address
        else None
    )
    arrival = _arrival(check, r, ctx)
    dst = check.spec.dst_host
    # the destination is one hop past the last router that answered, else as its SYN says
    dst_hops = r.last_hop_hops + 1 if hop is not None and r.last_hop_hops else arrival.hops
    if arrival.state == "arrived":
        return _Finding(
            "dropped",
            f"dropped by the destination's own firewall: {dst}'s interface saw the SYN from "
            f"{check.src_address}, and no answer came back {tries}",
            "host",
            _device(check.spec.dst_address, dst_hops, check, ctx),
        )
    if arrival.state == "nat":
        seen = ", ".join(arrival.seen_from)
        return _Finding(
            "dropped",
            f"dropped by the destination's own firewall: {dst}'s interface saw the SYN arrive "
            f"from {seen}, not {check.src_address} (NAT), and no answer came back {tries}",
            "host",
            _device(check.spec.dst_address, dst_hops, check, ctx),
            arrival.seen_from,
        )
    if arrival.state == "missing":
        text = (
            f"dropped in the network: no answer from {_where(check)} {tries}, and {dst}'s "
            "interface never saw the SYN"
        )
        if hop is not None:
            text += f"; the last hop that answered was {device_words(hop)}: at or just past it"
        elif r.mode == "syn" or r.last_hop_hops is not None:
            text += "; no hop answered a traceroute"
        return _Finding("dropped", text, "network", hop)
    text = f"dropped: no answer from {_where(check)} {tries}"
    if hop is not None:
        text += f"; last hop that answered {device_words(hop)}"
    elif r.mode == "syn":
        text += "; no hop answered a traceroute"
    return _Finding("dropped", text, None, hop)


_FROM = re.compile(r" from \S+$")


def _icmp(check: ExpectedCheck, r: ProbeResult, ctx: _Context) -> _Finding:
    dev = _device(r.responder, r.responder_hops, check, ctx) if r.responder else None
    side: Side | None = None
    if r.responder == check.spec.dst_address:
        side = "host"
    elif r.responder:
        side = "network"
    frm = f" from {device_words(dev)}" if dev is not None else ""
    if r.state == "unreachable":
        kind = _FROM.sub("", r.error) or "ICMP host unreachable"
        return _Finding("unreachable", f"unreachable: {kind}{frm}", side, dev)
    return _Finding(
        "prohibited", f"prohibited by a firewall (ICMP administratively prohibited{frm})", side, dev
    )


def _not_open(check: ExpectedCheck, r: ProbeResult, ctx: _Context) -> _Finding:
    if r.state == "refused":
        return _refused(check, r, ctx)
    if r.state == "filtered":
        return _dropped(check, r, ctx)
    if r.state in ("unreachable", "prohibited"):
        return _icmp(check, r, ctx)
    return _Finding("error", f"the probe failed on {check.src_host}: {r.error or 'unknown error'}")


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
        nat = _nat(check, ctx) if cause == "nat" else ()
        return CheckRow(check, verdict, cause, text, r, seen_from=nat)
    if check.spec.expect == "closed" and r.state != "error":
        return CheckRow(check, "pass", "ok", f"closed as expected ({r.state})", r)
    f = _not_open(check, r, ctx)
    verdict = "unknown" if f.cause in UNTESTED else "fail"
    return CheckRow(check, verdict, f.cause, f.text, r, f.side, f.device, f.seen_from)


# No evidence from the other end, and no clock: a result judged on its own.
_ALONE = _Context(
    freshness=float("inf"),
    now=0.0,
    listeners={},
    peers={},
    expected_sources={},
    agent_hosts=frozenset(),
    agent_roles=frozenset(),
)


def judge_alone(check: ExpectedCheck, r: ProbeResult) -> CheckRow:
    """The verdict of one result by itself: what its source saw, without the destination's
    evidence (listeners, captures, NAT) and without ageing (history's verdicts,
    :mod:`controller.history`). A reset is ``rejected`` or ``nothing_listening`` only when the
    result itself tells (its responder or its TTL), else ``refused``. Its verdict and cause
    depend only on the check's ``expect`` and the result's state, service-check outcome,
    whether a responder is the destination or another address, and ``rst_from_firewall``
    (history caches them by that key; ``tests/test_history.py`` holds it to that)."""
    return judge(check, r, _ALONE)


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
    syns: dict[tuple[str, int], list[PeerSeen]] = defaultdict(list)
    seen_at: dict[str, set[tuple[int, str]]] = defaultdict(set)
    for host, ps in observed.peers.items():
        for p in ps:
            if p.at >= fresh_after:
                seen[(host, p.port)].add(p.src_address)
                seen_at[host].add((p.port, p.src_address))
                if p.how == "syn":
                    syns[(host, p.port)].append(p)
    ctx = _Context(
        freshness=spec.policy.freshness_seconds,
        now=now,
        listeners={h: {s.port: s for s in ls} for h, ls in observed.listeners.items()},
        peers={k: frozenset(v) for k, v in seen.items()},
        expected_sources={k: frozenset(v) for k, v in expected_sources.items()},
        agent_hosts=frozenset(a.host for a in observed.agents),
        agent_roles=frozenset(n for n, r in spec.roles.items() if r.agent),
        syns={k: tuple(v) for k, v in syns.items()},
        capture_hosts=frozenset(h for h, _ in syns),
        seen_at={h: frozenset(v) for h, v in seen_at.items()},
        peers_until={a.host: a.peers_until for a in observed.agents if a.peers_until},
        names=expected.devices,
        probe_timeout=spec.policy.probe_timeout_seconds,
        history=observed.history,
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
        guest_facts=observed.guest_facts,
        history=observed.history,
        paths=interconnect.verdicts(
            spec.qualification,
            interconnect.path_keys(
                spec.qualification, {i.id: i for i in spec.interactions}, checks
            ),
            observed.paths,
            now,
        ),
    )
