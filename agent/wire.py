"""The wire format between agents and the controller.

One definition for both ends: plain, frozen stdlib dataclasses, so the agent needs nothing
beyond the standard library to read a plan or write results (it must run on a guest VM with
only Python 3). Two decoders read them, with the same rules: the agent's :func:`decode`, and
pydantic in the controller (``TypeAdapter`` over these classes, configured by
``__pydantic_config__``). The rules, both ends:

- unknown fields are refused, missing fields without a default are refused;
- no coercion: ``"22"`` is not a port, ``"yes"`` and ``1`` are not booleans, ``true`` is not
  a number; an integer is accepted where a float is expected (JSON does not tell ``1`` from
  ``1.0``), never the reverse;
- floats are finite (``NaN`` and ``Infinity`` are refused);
- numbers stay within the :class:`Limit` of their field (ports 1..65535, counts within what
  SQLite holds, ...). Every limit is one ``Annotated`` alias in the "Limits" section below:
  the one place to add or change one (a limit on a tuple's length works the same way).

tests/test_wire_contract.py runs one table of good and bad payloads through both decoders.

Version 1 of the format. Field names are part of the stable interface: add, never rename.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from typing import (
    Annotated,
    Any,
    Literal,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from netcheck.agent.errors import WireError as WireError

WIRE_VERSION = 1

# What happened to one outbound port, seen from the source.
ProbeState = Literal["open", "refused", "filtered", "unreachable", "prohibited", "error"]
PROBE_STATES: tuple[str, ...] = get_args(ProbeState)
# How the state was found: a full TCP connect, or a raw half-open SYN (needs CAP_NET_RAW).
ProbeMode = Literal["connect", "syn"]
# What a stand-in listener could do with its port.
# "closed": the agent stopped holding the port (it shut down, or its plan dropped the port);
# `since` is when. A reset seen by a probe after that says nothing about a firewall.
ListenState = Literal["listening", "occupied", "denied", "error", "closed"]
# The application protocol a port should answer with (see topology.yaml, `service`).
Service = Literal["tcp", "ssh", "tls", "https", "vsphere", "docker", "authd", "iscsi"]
SERVICES: tuple[str, ...] = get_args(Service)
# Outcome of the protocol check layered on an open connection.
ServiceOutcome = Literal["ok", "mismatch", "error", "skipped"]
Expectation = Literal["open", "closed"]
# How a destination agent saw a peer: a stand-in listener accepted its connection
# ("accepted"), or its interface capture saw a SYN for a planned inbound port ("syn": before
# the host's own firewall, netfilter's input hooks run after packet taps).
PeerHow = Literal["accepted", "syn"]

# pydantic's configuration of every wire class (the controller's decoder): the same rules
# as :func:`decode`. A plain dict: the agent does not import pydantic.
_FORBID: dict[str, Any] = {"extra": "forbid", "strict": True, "allow_inf_nan": False}


@dataclasses.dataclass(frozen=True)
class Limit:
    """Bounds of one field, read by both decoders: ``ge``/``le`` for a number, ``max_length``
    for a tuple or a string (None: no bound)."""

    ge: float | None = None
    le: float | None = None
    max_length: int | None = None

    def problem(self, value: Any) -> str | None:
        """Why `value` breaks this limit, or None."""
        if self.max_length is not None and len(value) > self.max_length:
            return f"{len(value)} items, more than {self.max_length}"
        if self.ge is not None and value < self.ge:
            return f"{value!r} is less than {self.ge:g}"
        if self.le is not None and value > self.le:
            return f"{value!r} is more than {self.le:g}"
        return None

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        """pydantic's schema of the field with these bounds (its own ge/le/max_length, so
        the controller's hot path stays in pydantic-core). Called by pydantic only."""
        schema = dict(handler(source))
        bounds = {"ge": self.ge, "le": self.le, "max_length": self.max_length}
        schema.update({k: v for k, v in bounds.items() if v is not None})
        return schema


# -- Limits: the one place for the bounds of the wire format -----------------------------
# SQLite stores an integer in at most 8 bytes, signed.
SQLITE_INT_MAX = 2**63 - 1
Port = Annotated[int, Limit(ge=1, le=65535)]
# An interaction's number in topology.yaml (>= 1 there).
InteractionId = Annotated[int, Limit(ge=1, le=2**31 - 1)]
# Tries of one check (the plan's retries + 1, and then some).
Attempts = Annotated[int, Limit(ge=0, le=1000)]
Retries = Annotated[int, Limit(ge=0, le=100)]
Concurrency = Annotated[int, Limit(ge=1, le=1_000_000)]
# Results dropped by an agent: a count, never negative, within what SQLite can add up.
Dropped = Annotated[int, Limit(ge=0, le=2**53)]
WireVersion = Annotated[int, Limit(ge=1, le=1000)]
# A duration in seconds (a timeout, a period, a latency).
Seconds = Annotated[float, Limit(ge=0, le=SQLITE_INT_MAX)]
# Items of one result batch (an agent sends at most its batch size, 1,000 by default, of
# results and of peers, and its whole listener picture). The controller answers 413 beyond.
MAX_BATCH_RESULTS = 10_000
MAX_BATCH_LISTENERS = 10_000
MAX_BATCH_PEERS = 10_000
# An IP time-to-live as a packet arrived with it (one byte).
Ttl = Annotated[int, Limit(ge=0, le=255)]
# A plan's digest: sha256 in hex (64 characters), or "" when not given.
Digest = Annotated[str, Limit(max_length=64)]
# Hops from the source to a router or host (a traceroute's TTL, or one estimated from a
# reply's TTL): at least 1, at most what one byte of TTL can travel.
Hops = Annotated[int, Limit(ge=1, le=255)]


@dataclasses.dataclass(frozen=True)
class Registration:
    """What an agent says about itself when it registers."""

    __pydantic_config__ = _FORBID

    role: str
    host: str
    address: str
    version: str
    mode: ProbeMode
    wire_version: WireVersion = WIRE_VERSION


@dataclasses.dataclass(frozen=True)
class ListenSpec:
    """One inbound port the agent must hold as a stand-in for its role."""

    __pydantic_config__ = _FORBID

    port: Port
    service: Service
    interactions: tuple[InteractionId, ...] = ()


@dataclasses.dataclass(frozen=True)
class CheckSpec:
    """One outbound check: this agent's host to one destination host and port."""

    __pydantic_config__ = _FORBID

    check_id: str
    interaction: InteractionId
    dst_role: str
    dst_host: str
    dst_address: str
    port: Port
    service: Service
    expect: Expectation = "open"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything an agent does: listen on `listen`, probe `checks`, every `period_s`."""

    __pydantic_config__ = _FORBID

    role: str
    host: str
    address: str
    listen: tuple[ListenSpec, ...]
    checks: tuple[CheckSpec, ...]
    # The longest a probe waits for an answer. With `min_timeout_s` > 0 the timeout adapts:
    # a silent port gives up after rtt_factor x the round trip measured to the same
    # destination in the same round, but never before min_timeout_s (nor after timeout_s).
    timeout_s: Seconds = 2.0
    min_timeout_s: Seconds = 0.0
    rtt_factor: Annotated[float, Limit(ge=0, le=1e6)] = 10.0
    retries: Retries = 2
    period_s: Seconds = 300.0
    concurrency: Concurrency = 512
    wire_version: WireVersion = WIRE_VERSION
    # sha256 (hex) of this plan's canonical encoding (:func:`plan_digest`), set by the
    # controller; every answer to the agent carries its current one, so a stale plan shows.
    plan_digest: Digest = ""
    # Data paths to qualify (issue 16): measured when the controller asks (an "interconnect"
    # request), never on their own.
    paths: Annotated[tuple[PathSpec, ...], Limit(max_length=MAX_PATHS)] = ()


@dataclasses.dataclass(frozen=True)
class ResultsAck:
    """The controller's answer to a result batch: how many results it stored, and the
    digest of the sender's current plan (a stale plan is fetched again)."""

    __pydantic_config__ = _FORBID

    accepted: Annotated[int, Limit(ge=0, le=MAX_BATCH_RESULTS)]
    plan_digest: Digest = ""
    # The request channel: this agent's pending requests (see AgentRequest below), if any.
    requests: Annotated[tuple[AgentRequest, ...], Limit(max_length=MAX_REQUESTS)] = ()


@dataclasses.dataclass(frozen=True)
class ServiceCheck:
    """What the protocol check on an open port found."""

    __pydantic_config__ = _FORBID

    service: Service
    outcome: ServiceOutcome
    detail: str = ""
    # TLS only: certificate subject and expiry (seconds since the epoch).
    tls_subject: str | None = None
    tls_not_after: float | None = None


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What happened to one outbound check."""

    __pydantic_config__ = _FORBID

    check_id: str
    interaction: InteractionId
    src_host: str
    src_address: str
    dst_host: str
    dst_address: str
    port: Port
    state: ProbeState
    mode: ProbeMode
    attempts: Attempts
    started_at: float
    latency_s: Seconds | None = None
    service_check: ServiceCheck | None = None
    # The last router that answered a TCP traceroute on this port (not-open ports; SYN mode
    # by raw TTL-limited SYNs, connect mode by connect() with IP_TTL and IP_RECVERR).
    last_hop: str | None = None
    # Where the ICMP error or the reset came from, when that is known: the address that
    # really answered (an ICMP sender, or the source of a reset).
    responder: str | None = None
    # Raw mode, state "refused": True when the reset's TTL shows it came from fewer hops away
    # than the destination's own packets (a firewall's reject), False when it matches the
    # destination, None when unknown.
    rst_from_firewall: bool | None = None
    error: str = ""
    # Hops from the source to `responder`: from the traceroute when it reached that address,
    # else estimated from the reply's TTL (initial 64/128/255 minus received, + 1).
    responder_hops: Hops | None = None
    # The hop number (traceroute TTL) of `last_hop`.
    last_hop_hops: Hops | None = None


@dataclasses.dataclass(frozen=True)
class PeerSeen:
    """A peer seen on a planned inbound port: who it came from, as seen here. One record per
    (port, src_address, how) between two reports, with the latest `at`."""

    __pydantic_config__ = _FORBID

    port: Port
    src_address: str
    at: float
    # "accepted": a stand-in listener accepted the connection; "syn": the interface capture
    # saw its SYN (whatever the host's own firewall then did with it).
    how: PeerHow = "accepted"
    # how="syn" only: the IP TTL the SYN arrived with.
    ttl: Ttl | None = None


@dataclasses.dataclass(frozen=True)
class ListenerStatus:
    """The state of one stand-in listener on the agent's host."""

    __pydantic_config__ = _FORBID

    port: Port
    state: ListenState
    since: float
    owner: str = ""
    error: str = ""


# A guest's facts (the guest agent, netcheck.agent.guest): at most this many per batch, each
# name and value bounded.
MAX_BATCH_FACTS = 512
FactName = Annotated[str, Limit(max_length=128)]
FactText = Annotated[str, Limit(max_length=1024)]


@dataclasses.dataclass(frozen=True)
class Fact:
    """One fact of a guest VM, and how it was found: ``source`` is ``file:/etc/os-release``,
    ``command:lsinitrd``, ``proc:/proc``, ``service:systemd``, ``statvfs:/boot``,
    ``powershell:Get-Service MSiSCSI``, ... A value of None: the guest could not tell."""

    __pydantic_config__ = _FORBID

    name: FactName
    value: FactText | bool | int | None
    source: Annotated[str, Limit(max_length=256)]
    detail: Annotated[str, Limit(max_length=512)] = ""


@dataclasses.dataclass(frozen=True)
class ResultBatch:
    """One report from an agent: probe results, listener states and peers seen."""

    __pydantic_config__ = _FORBID

    role: str
    host: str
    results: Annotated[tuple[ProbeResult, ...], Limit(max_length=MAX_BATCH_RESULTS)] = ()
    listeners: Annotated[tuple[ListenerStatus, ...], Limit(max_length=MAX_BATCH_LISTENERS)] = ()
    peers: Annotated[tuple[PeerSeen, ...], Limit(max_length=MAX_BATCH_PEERS)] = ()
    sent_at: float = 0.0
    # Every peer this agent saw (accepted, or its SYN captured) before this time is in this
    # batch or an earlier one: what its silence about a source means (0: not stated).
    peers_until: float = 0.0
    # Results the agent had to drop because its buffer was full while the controller was away.
    dropped: Dropped = 0
    wire_version: WireVersion = WIRE_VERSION
    # A guest agent's facts, the whole picture (empty: none in this batch, the stored stay).
    facts: Annotated[tuple[Fact, ...], Limit(max_length=MAX_BATCH_FACTS)] = ()


# -- Requests: work the operator asks of one agent, through the controller ----------------
# The channel is generic (controller/requests.py, agent/requests.py): a request names its
# kind, its parameters, its id, the agent that runs it (role + host) and a deadline; the
# controller hands it over in its answers to that agent (``requests`` in the results ack and
# in the answer of POST /api/v1/agent-requests), the agent acknowledges it (a report with
# state "running"), and reports once more when it is done or failed. To add a kind: its name
# in RequestKind, its result fields (a tuple, bounded, default empty) in RequestReport, its
# handler in agent/requests.py HANDLERS, its checks in controller/requests.py CHECKERS.
RequestKind = Literal["exposure", "interconnect"]
REQUEST_KINDS: tuple[str, ...] = get_args(RequestKind)
RequestState = Literal["running", "done", "failed"]
RequestId = Annotated[str, Limit(max_length=64)]
Name = Annotated[str, Limit(max_length=128)]
# Requests handed over in one answer, parameters per request, and what one report carries.
MAX_REQUESTS = 64
MAX_REQUEST_PARAMS = 32
MAX_REQUEST_REPORTS = 64
MAX_SWEPT_HOSTS = 1_000
MAX_OPEN_PORTS = 20_000
# A service banner as an exposure sweep read it (bytes beyond are not read).
MAX_BANNER = 256
Banner = Annotated[str, Limit(max_length=MAX_BANNER)]
Detail = Annotated[str, Limit(max_length=2_000)]


@dataclasses.dataclass(frozen=True)
class RequestParam:
    """One parameter of a request: a number, or a short text."""

    __pydantic_config__ = _FORBID

    name: Annotated[str, Limit(max_length=64)]
    value: float | Annotated[str, Limit(max_length=256)]


@dataclasses.dataclass(frozen=True)
class AgentRequest:
    """Work for one agent (`role`, `host`), to be finished by `deadline` (seconds since the
    epoch); its kind's parameters in `params`."""

    __pydantic_config__ = _FORBID

    id: RequestId
    kind: RequestKind
    role: Name
    host: Name
    deadline: float
    params: Annotated[tuple[RequestParam, ...], Limit(max_length=MAX_REQUEST_PARAMS)] = ()
    created_at: float = 0.0


@dataclasses.dataclass(frozen=True)
class SweptHost:
    """exposure: one destination swept, and how."""

    __pydantic_config__ = _FORBID

    dst_host: Name
    dst_address: Name
    ports: Annotated[int, Limit(ge=0, le=65535)]
    mode: ProbeMode
    seconds: Seconds
    # Ports that gave no answer the sweep could read (not open, not refused): for the record.
    silent: Annotated[int, Limit(ge=0, le=65535)] = 0
    # True when the deadline or the sweep's own bound cut it short.
    complete: bool = True


@dataclasses.dataclass(frozen=True)
class OpenPort:
    """exposure: a TCP port of a destination that accepted a connection (or SYN-ACKed)."""

    __pydantic_config__ = _FORBID

    dst_host: Name
    dst_address: Name
    port: Port
    banner: Banner = ""


# interconnect (issue 16): one data path to qualify (a host pair of a qualified interaction,
# topology.yaml ``qualification:``), and what the agent measured on it (agent/qualify.py).
MAX_PATHS = 256
MAX_THROUGHPUT_PORTS = 64
Mtu = Annotated[int, Limit(ge=68, le=65535)]
Ratio = Annotated[float, Limit(ge=0, le=1)]
Mbit = Annotated[float, Limit(ge=0, le=1e7)]


@dataclasses.dataclass(frozen=True)
class PathSpec:
    """One path to qualify: from this agent to (dst_host, dst_address) on `port`; throughput
    over `throughput_ports` (one stream each)."""

    __pydantic_config__ = _FORBID

    interaction: InteractionId
    dst_role: Name
    dst_host: Name
    dst_address: Name
    port: Port
    throughput_ports: Annotated[tuple[Port, ...], Limit(max_length=MAX_THROUGHPUT_PORTS)] = ()
    rtt_samples: Annotated[int, Limit(ge=1, le=1000)] = 10
    throughput_seconds: Annotated[float, Limit(ge=0.1, le=60)] = 10.0
    throughput_bytes_per_stream: Annotated[int, Limit(ge=1, le=16 * 2**30)] = 256 * 2**20


@dataclasses.dataclass(frozen=True)
class PathMeasurement:
    """What an agent measured on one path (None: not measured this time)."""

    __pydantic_config__ = _FORBID

    interaction: InteractionId
    src_host: Name
    dst_host: Name
    dst_address: Name
    port: Port
    at: float
    mtu: Mtu | None = None
    route_mtu: Mtu | None = None
    icmp: bool | None = None
    black_hole: bool = False
    mtu_probes: Annotated[int, Limit(ge=0, le=1000)] = 0
    rtt_avg_s: Seconds | None = None
    rtt_min_s: Seconds | None = None
    rtt_max_s: Seconds | None = None
    jitter_s: Seconds | None = None
    loss: Ratio | None = None
    rtt_samples: Annotated[int, Limit(ge=0, le=1000)] = 0
    up_mbit_s: Mbit | None = None
    down_mbit_s: Mbit | None = None
    throughput_streams: Annotated[int, Limit(ge=0, le=MAX_THROUGHPUT_PORTS)] = 0
    error: Detail = ""


@dataclasses.dataclass(frozen=True)
class RequestReport:
    """What an agent says about one request: "running" acknowledges it, "done" or "failed"
    ends it (with the kind's results)."""

    __pydantic_config__ = _FORBID

    id: RequestId
    kind: RequestKind
    state: RequestState
    at: float
    detail: Detail = ""
    # kind "exposure"
    swept: Annotated[tuple[SweptHost, ...], Limit(max_length=MAX_SWEPT_HOSTS)] = ()
    open_ports: Annotated[tuple[OpenPort, ...], Limit(max_length=MAX_OPEN_PORTS)] = ()
    # kind "interconnect"
    paths: Annotated[tuple[PathMeasurement, ...], Limit(max_length=MAX_PATHS)] = ()


@dataclasses.dataclass(frozen=True)
class RequestExchange:
    """POST /api/v1/agent-requests: an agent's reports (maybe none: then it only asks for
    requests); the answer is ``{"accepted": n, "requests": [AgentRequest, ...]}``."""

    __pydantic_config__ = _FORBID

    role: Name
    host: Name
    reports: Annotated[tuple[RequestReport, ...], Limit(max_length=MAX_REQUEST_REPORTS)] = ()
    wire_version: WireVersion = WIRE_VERSION


def check_id(interaction: int, src_host: str, dst_host: str, port: int) -> str:
    """The stable key of one expected check."""
    return f"{interaction}:{src_host}>{dst_host}:{port}"


def plan_digest(plan: Plan) -> str:
    """sha256 (hex) of the plan's canonical encoding: its JSON with sorted keys, no spaces,
    a whole float written as an integer (JSON does not tell ``2`` from ``2.0``), its own
    ``plan_digest`` left out. The controller computes it; an agent compares the digests it
    is sent (it never needs to recompute one, but would find the same)."""
    data = encode(plan)
    data.pop("plan_digest", None)
    text = json.dumps(_canonical(data), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def encode(obj: Any) -> Any:
    """A wire dataclass (or a list of them) as JSON-ready data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [encode(v) for v in obj]
    return obj


T = TypeVar("T")


def decode(cls: type[T], data: Any, where: str = "") -> T:
    """Build a wire dataclass from JSON data, refusing unknown or missing fields."""
    value = _decode(cls, data, where or cls.__name__)
    return typing.cast(T, value)


@functools.cache
def _shape(tp: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """A wire dataclass's resolved field types and its fields (resolved once per class: a
    plan of thousands of checks decoded ``get_type_hints`` for each check)."""
    hints = get_type_hints(tp, include_extras=True)
    return hints, {f.name: f for f in dataclasses.fields(tp)}


def _decode(tp: Any, data: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extras = get_args(tp)
        value = _decode(base, data, where)
        for limit in extras:
            problem = limit.problem(value) if isinstance(limit, Limit) else None
            if problem:
                raise WireError(f"{where}: {problem}")
        return value
    if origin is Literal:
        if data not in get_args(tp):
            raise WireError(f"{where}: {data!r} is not one of {list(get_args(tp))}")
        return data
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if data is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode(arg, data, where)
            except WireError as exc:
                errors.append(str(exc))
        raise WireError("; ".join(errors))
    if origin is tuple:
        if not isinstance(data, list | tuple):
            raise WireError(f"{where}: expected a list")
        (item,) = get_args(tp)[:1]
        return tuple(_decode(item, v, f"{where}[{i}]") for i, v in enumerate(data))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise WireError(f"{where}: expected an object")
        hints, fields = _shape(tp)
        unknown = set(data) - set(fields)
        if unknown:
            raise WireError(f"{where}: unknown field(s) {sorted(unknown)}")
        kwargs = {}
        for name, f in fields.items():
            if name in data:
                kwargs[name] = _decode(hints[name], data[name], f"{where}.{name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise WireError(f"{where}: missing field {name!r}")
        return typing.cast(Any, tp)(**kwargs)
    if tp is bool:
        if not isinstance(data, bool):
            raise WireError(f"{where}: expected true or false")
        return data
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise WireError(f"{where}: expected a number")
        try:
            value = float(data)
        except OverflowError:  # an integer beyond any float
            raise WireError(f"{where}: an integer too large for a number") from None
        if not math.isfinite(value):
            raise WireError(f"{where}: {data!r} is not a finite number")
        return value
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise WireError(f"{where}: expected an integer")
        return data
    if tp is str:
        if not isinstance(data, str):
            raise WireError(f"{where}: expected a string")
        return data
    raise WireError(f"{where}: unsupported type {tp!r}")
