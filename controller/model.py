"""What evaluation reads and produces: verdicts per expected check, roll-ups, gate decisions.

:class:`Observed` (with :class:`AgentSeen`) is what evaluation reads, built by
:meth:`controller.store.Store.snapshot`. The others are the shapes every renderer (page,
reports, metrics) and the gate read. They are built by :mod:`controller.evaluate` and
:mod:`controller.gate` (pure functions); nothing else constructs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from netcheck.agent.wire import ListenerStatus, PathMeasurement, PeerSeen, ProbeResult
from netcheck.controller.expand import ExpectedCheck
from netcheck.controller.facts import GuestFacts
from netcheck.controller.interconnect import PathVerdict
from netcheck.controller.readiness import StepFinding

Verdict = Literal["pass", "fail", "unknown"]
# Why a check has its verdict, as a stable code (the JSON report's `cause`).
Cause = Literal[
    "ok",  # open as expected (or closed as expected)
    "dropped",  # no answer at all: a firewall drops the packets
    "rejected",  # a reset (or ICMP reject) from a firewall, the destination was listening
    "nothing_listening",  # a reset from the destination itself, nothing listens there
    "refused",  # a reset, and nothing tells whether the firewall or the host sent it
    "unreachable",  # ICMP host/network unreachable
    "prohibited",  # ICMP administratively prohibited (a firewall's reject)
    "wrong_service",  # the port is open but something else answers
    "nat",  # open, but the destination saw the connection come from another address
    "unexpected_open",  # expected closed, but it connected
    "error",  # the probe itself failed (local error)
    "not_tested",  # no result yet
    "listener_down",  # a reset while the destination's stand-in was not up (verdict unknown)
    "stale",  # the newest result is older than the freshness limit
]
Decision = Literal["go", "no-go", "undecided"]
# Where a failing check was stopped: in the network (a router or firewall on the path) or on
# the destination host itself (its own firewall, or nothing listening there).
Side = Literal["network", "host"]


@dataclass(frozen=True)
class Device:
    """The device that acted on a check, as far as the evidence goes.

    ``address`` is None when the device answered in the destination's name (a reset forged by
    a firewall on the path); ``hops`` counts from the source (None when not known); ``name``
    comes from the inventory (its ``network:`` section, or a host's name). ``at`` is
    ``"after"`` for a drop: the device is the last hop that answered, and the packets died
    there or just past it.
    """

    address: str | None
    hops: int | None = None
    name: str = ""
    at: Literal["at", "after"] = "at"


@dataclass(frozen=True)
class CheckRow:
    """One expected check with its verdict and a diagnosis in plain words.

    ``side``, ``device`` and ``seen_from`` are the diagnosis as data (None / empty when the
    evidence does not say): the side that stopped a failing check, the device that acted, and
    the addresses the destination saw this source's packets arrive from instead of its own
    (NAT).
    """

    check: ExpectedCheck
    verdict: Verdict
    cause: Cause
    diagnosis: str
    result: ProbeResult | None = None
    side: Side | None = None
    device: Device | None = None
    seen_from: tuple[str, ...] = ()


def rolled_up(failed: int, unknown: int) -> Verdict:
    """The verdict of a group: any failure fails it, else any unknown makes it unknown."""
    if failed:
        return "fail"
    if unknown:
        return "unknown"
    return "pass"


@dataclass(frozen=True)
class Rollup:
    """Counts over a group of checks (one interaction, or one role pair)."""

    key: str  # "4" for interaction 4, "pio>prem_manager" for a role pair
    title: str
    src_role: str
    dst_role: str
    passed: int
    failed: int
    unknown: int

    @property
    def verdict(self) -> Verdict:
        return rolled_up(self.failed, self.unknown)

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.unknown


@dataclass(frozen=True)
class AgentSeen:
    """An agent as the controller last heard from it."""

    role: str
    host: str
    address: str
    mode: str
    version: str
    last_report: float | None
    # Every peer it saw before this time is reported (ResultBatch.peers_until); None: unknown.
    peers_until: float | None = None


@dataclass(frozen=True)
class CheckHistory:
    """One check's history in brief (:mod:`controller.history`), as the store keeps it.

    ``first_seen``: the time of its first result; ``last_change``: of the newest change of
    verdict, state or cause; ``verdict`` and ``since``: its verdict by its newest result, and
    since when it has had that verdict (for a failing check, the start of the current outage);
    ``flaps``: changes between pass and fail within the policy's ``flap_window_seconds``.
    Verdicts of history are judged from each result alone (see :mod:`controller.history`).
    """

    first_seen: float
    last_change: float
    verdict: Verdict
    since: float
    flaps: int = 0

    @property
    def failing_since(self) -> float | None:
        return self.since if self.verdict == "fail" else None


def _no_history() -> Mapping[str, CheckHistory]:
    return MappingProxyType({})


def _no_listeners() -> Mapping[str, tuple[ListenerStatus, ...]]:
    return MappingProxyType({})


def _no_peers() -> Mapping[str, tuple[PeerSeen, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Observed:
    """What the store holds at one moment (:meth:`~netcheck.controller.store.Store.snapshot`).

    Everything the agents reported: the newest result per check id (expected or not), and,
    keyed by the host that reported them, its stand-in listeners and the peers they saw.
    """

    results: tuple[ProbeResult, ...] = ()
    listeners: Mapping[str, tuple[ListenerStatus, ...]] = field(default_factory=_no_listeners)
    peers: Mapping[str, tuple[PeerSeen, ...]] = field(default_factory=_no_peers)
    agents: tuple[AgentSeen, ...] = ()
    # check id -> the identity that sent its newest result ("cert:<serial>", "token", ...).
    sent_by: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # host -> the newest facts of its guest agent (controller/facts.py).
    guest_facts: Mapping[str, GuestFacts] = field(default_factory=lambda: MappingProxyType({}))
    # check id -> its history in brief (checks with at least one result since history began).
    history: Mapping[str, CheckHistory] = field(default_factory=_no_history)
    # (interaction, src_host, dst_host) -> the newest path measurement (controller.pathstore).
    paths: Mapping[tuple[int, str, str], PathMeasurement] = field(
        default_factory=lambda: MappingProxyType({})
    )


@dataclass(frozen=True)
class Evaluation:
    """Everything the controller knows, judged against the spec at ``generated_at``."""

    generated_at: float
    site: str
    rows: tuple[CheckRow, ...]
    by_interaction: tuple[Rollup, ...]
    by_role_pair: tuple[Rollup, ...]
    # Results that match no expected check: kept and shown, never dropped.
    unexpected: tuple[ProbeResult, ...]
    listeners: dict[str, tuple[ListenerStatus, ...]]  # host -> its stand-in listeners
    peers: tuple[PeerSeen, ...]
    agents: tuple[AgentSeen, ...]
    # check id -> the identity that sent its newest result (Observed.sent_by).
    sent_by: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # host -> the newest facts of its guest agent (controller/facts.py).
    guest_facts: Mapping[str, GuestFacts] = field(default_factory=lambda: MappingProxyType({}))
    # check id -> its history in brief (Observed.history).
    history: Mapping[str, CheckHistory] = field(default_factory=_no_history)
    # Every qualified data path judged against its thresholds (controller.interconnect).
    paths: tuple[PathVerdict, ...] = ()


@dataclass(frozen=True)
class MatrixFinding:
    """What the guest OS matrix says about one VM for one mode."""

    column: str
    status: str  # qualified | not_qualified | not_supported
    text: str  # the seed's text, e.g. "Not Qualified(DP-2953)"
    blocks: bool


@dataclass(frozen=True)
class GateDecision:
    """Go / no-go for one migration mode (and optionally one VM)."""

    mode: str
    decision: Decision
    blocking: tuple[CheckRow, ...]  # required checks that fail or are unknown
    reasons: tuple[str, ...]  # plain words, first the blocking ones
    warnings: tuple[str, ...]
    vm: str | None = None
    matrix: tuple[MatrixFinding, ...] = ()
    # With a VM: each prepare step of HDM and what the guest's facts say of it (readiness.py).
    prepare: tuple[StepFinding, ...] = ()
