"""Interconnect qualification: thresholds per data path, and each path's verdict. Pure.

topology.yaml's ``qualification:`` section (:class:`Qualification`) names the data
interactions to qualify and, for each, the minimum path MTU, the maximum round trip and
loss, and the minimum throughput per direction. The agents measure each host pair of those
interactions on the interaction's own port (:mod:`agent.qualify`); :func:`verdicts` judges
the newest measurement of each pair against its thresholds: ``pass``, ``fail`` (one figure
beyond its threshold, or a black hole), or ``unknown`` (no fresh measurement). Each figure
carries its margin: how far it is from its threshold (positive: inside, negative: beyond),
so the report can say "RTT 12.3 ms, 17.7 ms under the 30 ms limit".

The gate (:func:`gate_findings`) adds "interconnect qualified" to a mode: a required path of
one of the mode's interactions that fails blocks the mode; an unmeasured one blocks only
when ``unmeasured: block`` (the shipped policy warns: see topology.yaml).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from netcheck.agent.wire import MAX_PATHS, MAX_THROUGHPUT_PORTS, PathMeasurement, PathSpec
from netcheck.controller.sourced import Problem, Sourced

if TYPE_CHECKING:
    from netcheck.controller.expand import ExpectedCheck

MAX_PATH_POLICIES = 64
PathVerdictKind = Literal["pass", "fail", "unknown"]
Figure = Literal["mtu", "rtt", "loss", "throughput_up", "throughput_down", "black_hole"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathPolicy(BaseModel):
    """The thresholds of one data interaction (None: that figure is not judged)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interaction: int = Field(ge=1)
    # The port the MTU and round trip are measured on (default: the interaction's first
    # plain-TCP flow's first port), and the throughput ports (default: that flow's range).
    port: int | None = Field(None, ge=1, le=65535)
    throughput_ports: str | None = None
    min_mtu: int | None = Field(None, ge=68, le=65535)
    max_rtt_ms: float | None = Field(None, gt=0, le=60_000)
    max_loss_percent: float | None = Field(None, ge=0, le=100)
    min_throughput_mbit: float | None = Field(None, gt=0, le=1_000_000)
    # False: measured and reported, never part of a gate.
    required: bool = True
    reason: str = Field("", max_length=2000)


class Qualification(_Frozen):
    """topology.yaml ``qualification:``."""

    # A measurement older than this is "unknown" (seconds).
    freshness_seconds: float = Field(3600, gt=0, le=30 * 86400)
    # MTU and round trip measured every this many seconds per path by the agent (0: never).
    every_seconds: float = Field(3600, ge=0, le=30 * 86400)
    # Throughput on a schedule (0: only on request; never by default: it loads the link).
    throughput_every_seconds: float = Field(0, ge=0, le=30 * 86400)
    throughput_seconds: float = Field(10, gt=0, le=60)
    throughput_bytes_per_stream: int = Field(256 * 2**20, ge=1, le=16 * 2**30)
    rtt_samples: int = Field(10, ge=1, le=1000)
    # What a required path without a fresh measurement does to the gate.
    unmeasured: Literal["warn", "block"] = "warn"
    paths: tuple[PathPolicy, ...] = Field((), max_length=MAX_PATH_POLICIES)

    def for_interaction(self, ident: int) -> PathPolicy | None:
        for p in self.paths:
            if p.interaction == ident:
                return p
        return None


class _FlowLike(Protocol):
    @property
    def service(self) -> str: ...

    @property
    def port_range(self) -> range: ...


class _InteractionLike(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def flows(self) -> Sequence[_FlowLike]: ...


def _range(text: str) -> range | None:
    lo, dash, hi = text.strip().partition("-")
    if not lo.strip().isdigit() or (dash and not hi.strip().isdigit()):
        return None
    a, b = int(lo), int(hi) if dash else int(lo)
    return range(a, b + 1) if 1 <= a <= b <= 65535 else None


def path_ports(policy: PathPolicy, inter: _InteractionLike) -> tuple[int, tuple[int, ...]]:
    """The port an interaction's paths are measured on, and its throughput ports: the
    policy's, else the first plain-TCP flow's first port and (with a throughput threshold)
    that flow's range (0, (): none)."""
    tcp = [f for f in inter.flows if f.service == "tcp"]
    port = policy.port or (tcp[0].port_range.start if tcp else 0)
    ports: tuple[int, ...] = ()
    if policy.throughput_ports is not None:
        r = _range(policy.throughput_ports)
        ports = tuple(r) if r is not None else ()
    elif tcp and policy.min_throughput_mbit is not None:
        ports = tuple(tcp[0].port_range)[:MAX_THROUGHPUT_PORTS]
    return port, ports


def check_qualification(
    src: Sourced, q: Qualification, interactions: Sequence[_InteractionLike]
) -> list[Problem]:
    """file:line problems of the ``qualification:`` section against the interactions."""
    by_id = {i.id: i for i in interactions}
    problems: list[Problem] = []
    seen: dict[int, int] = {}
    for k, p in enumerate(q.paths):
        at: tuple[str | int, ...] = ("qualification", "paths", k)
        inter = by_id.get(p.interaction)
        if inter is None:
            problems.append(
                src.problem((*at, "interaction"), f"interaction {p.interaction} does not exist")
            )
            continue
        if p.interaction in seen:
            problems.append(
                src.problem(
                    (*at, "interaction"),
                    f"interaction {p.interaction} is qualified twice "
                    f"(first at line {seen[p.interaction]})",
                )
            )
            continue
        seen[p.interaction] = src.line((*at, "interaction"))
        spec_ports = {n for f in inter.flows for n in f.port_range}
        if p.port is not None and p.port not in spec_ports:
            problems.append(
                src.problem(
                    (*at, "port"),
                    f"interaction {p.interaction}: port {p.port} is none of its ports",
                )
            )
        if p.port is None and not any(f.service == "tcp" for f in inter.flows):
            problems.append(
                src.problem(
                    at,
                    f"interaction {p.interaction} has no plain-TCP flow: say which port to "
                    "measure on ('port:')",
                )
            )
        if p.throughput_ports is not None:
            r = _range(p.throughput_ports)
            if r is None:
                problems.append(
                    src.problem(
                        (*at, "throughput_ports"),
                        f"throughput_ports {p.throughput_ports!r} is not a port or a "
                        "FIRST-LAST range",
                    )
                )
            elif len(r) > MAX_THROUGHPUT_PORTS:
                problems.append(
                    src.problem(
                        (*at, "throughput_ports"),
                        f"throughput_ports {p.throughput_ports}: {len(r)} ports, more than "
                        f"{MAX_THROUGHPUT_PORTS} streams",
                    )
                )
            elif not set(r) <= spec_ports:
                bad = min(set(r) - spec_ports)
                problems.append(
                    src.problem(
                        (*at, "throughput_ports"),
                        f"interaction {p.interaction}: throughput port {bad} is none of its ports",
                    )
                )
        if (
            p.min_throughput_mbit is not None
            and p.throughput_ports is None
            and not any(f.service == "tcp" for f in inter.flows)
        ):
            problems.append(
                src.problem(
                    (*at, "min_throughput_mbit"),
                    f"interaction {p.interaction}: a throughput threshold needs throughput_ports",
                )
            )
        if not p.required and not p.reason.strip():
            problems.append(
                src.problem(
                    (*at, "required"),
                    f"interaction {p.interaction}: 'required: false' needs a 'reason'",
                )
            )
    return problems


@dataclasses.dataclass(frozen=True)
class FigureVerdict:
    """One figure of one path against its threshold."""

    figure: Figure
    value: float | None  # None: not measured
    threshold: float | None  # None: not judged
    ok: bool | None  # None: not measured or not judged
    # How far the value is from its threshold, in the figure's unit (positive: inside).
    margin: float | None
    unit: str

    def describe(self) -> str:
        if self.value is None:
            return f"{self.figure}: not measured"
        v = _fmt(self.value, self.unit)
        if self.threshold is None or self.margin is None:
            return f"{self.figure} {v}"
        lim = _fmt(self.threshold, self.unit)
        word = (
            "above" if self.figure in ("mtu",) or self.figure.startswith("throughput") else "under"
        )
        if self.ok:
            return (
                f"{self.figure} {v}, {_fmt(abs(self.margin), self.unit)} {word} the {lim} threshold"
            )
        other = "below" if word == "above" else "over"
        return f"{self.figure} {v}, {_fmt(abs(self.margin), self.unit)} {other} the {lim} threshold"


def _fmt(x: float, unit: str) -> str:
    if unit == "bytes":
        return f"{x:.0f} bytes"
    if unit == "ms":
        return f"{x:.1f} ms"
    if unit == "%":
        return f"{x:.1f} %"
    return f"{x:.0f} {unit}"


@dataclasses.dataclass(frozen=True)
class PathVerdict:
    """One host pair of a qualified interaction, judged."""

    interaction: int
    src_role: str
    src_host: str
    dst_role: str
    dst_host: str
    port: int
    verdict: PathVerdictKind
    required: bool
    figures: tuple[FigureVerdict, ...]
    measurement: PathMeasurement | None
    reason: str  # plain words: what failed, or why unknown

    def figure(self, name: Figure) -> FigureVerdict | None:
        for f in self.figures:
            if f.figure == name:
                return f
        return None


@dataclasses.dataclass(frozen=True)
class PathKey:
    interaction: int
    src_role: str
    src_host: str
    dst_role: str
    dst_host: str
    port: int


def _judge(
    figure: Figure, value: float | None, threshold: float | None, minimum: bool, unit: str
) -> FigureVerdict:
    if value is None or threshold is None:
        return FigureVerdict(figure, value, threshold, None, None, unit)
    margin = value - threshold if minimum else threshold - value
    return FigureVerdict(figure, value, threshold, margin >= 0, margin, unit)


def judge(
    key: PathKey, policy: PathPolicy, m: PathMeasurement | None, now: float, freshness: float
) -> PathVerdict:
    """One path's verdict from its newest measurement (None: never measured)."""
    base = dataclasses.asdict(key)
    if m is None or m.at < now - freshness:
        why = "not measured yet" if m is None else f"measurement older than {freshness:g} s"
        return PathVerdict(**base, verdict="unknown", required=policy.required, figures=(),
                           measurement=m, reason=why)  # fmt: skip
    rtt_ms = m.rtt_avg_s * 1000 if m.rtt_avg_s is not None else None
    loss = m.loss * 100 if m.loss is not None else None
    figures = (
        _judge("mtu", m.mtu, policy.min_mtu, True, "bytes"),
        _judge("rtt", rtt_ms, policy.max_rtt_ms, False, "ms"),
        _judge("loss", loss, policy.max_loss_percent, False, "%"),
        _judge("throughput_up", m.up_mbit_s, policy.min_throughput_mbit, True, "Mbit/s"),
        _judge("throughput_down", m.down_mbit_s, policy.min_throughput_mbit, True, "Mbit/s"),
    )
    failed = [f.describe() for f in figures if f.ok is False]
    if m.black_hole:
        hole = (
            f"MTU black hole: packets above {m.mtu} bytes vanish without ICMP "
            "fragmentation-needed (clamp the MSS or let the ICMP through)"
        )
        failed.insert(0, hole)
    if m.mtu is None and m.error:
        failed.append(f"path MTU not found: {m.error}")
    missing = [f.figure for f in figures if f.threshold is not None and f.value is None]
    if failed:
        verdict: PathVerdictKind = "fail"
        reason = "; ".join(failed)
    elif missing and all(f.value is None for f in figures if f.threshold is not None):
        verdict, reason = "unknown", f"no figure measured ({m.error or 'no answer'})"
    else:
        verdict = "pass"
        reason = "within every threshold" + (
            f" (not measured yet: {', '.join(missing)})" if missing else ""
        )
    return PathVerdict(**base, verdict=verdict, required=policy.required, figures=figures,
                       measurement=m, reason=reason)  # fmt: skip


def verdicts(
    qualification: Qualification,
    pairs: Iterable[PathKey],
    measurements: Mapping[tuple[int, str, str], PathMeasurement],
    now: float,
) -> tuple[PathVerdict, ...]:
    """Every expected path (`pairs`) judged by its newest measurement, keyed by
    (interaction, src_host, dst_host)."""
    out = []
    for key in sorted(set(pairs), key=lambda k: (k.interaction, k.src_host, k.dst_host)):
        policy = qualification.for_interaction(key.interaction)
        if policy is None:
            continue
        m = measurements.get((key.interaction, key.src_host, key.dst_host))
        out.append(judge(key, policy, m, now, qualification.freshness_seconds))
    return tuple(out)


def gate_findings(
    qualification: Qualification, paths: Sequence[PathVerdict], interactions: Iterable[int]
) -> tuple[list[str], list[str]]:
    """(blocking reasons, warnings) of "interconnect qualified" for a mode's interactions.

    A failing required path blocks (a path with ``required: false`` warns). A path without a
    fresh measurement blocks with ``unmeasured: block``; otherwise it warns, once some path
    of the mode has been measured (before the first qualification the report's section says
    "not measured", and the gate's list is not filled with one line per path)."""
    wanted = set(interactions)
    mine = [p for p in paths if p.interaction in wanted]
    measured = any(p.verdict != "unknown" for p in mine)
    blocking: list[str] = []
    warnings: list[str] = []
    for p in mine:
        where = (
            f"interconnect not qualified: interaction {p.interaction} {p.src_host} -> {p.dst_host}"
        )
        if p.verdict == "fail":
            (blocking if p.required else warnings).append(f"{where}: {p.reason}")
        elif p.verdict == "unknown":
            if p.required and qualification.unmeasured == "block":
                blocking.append(f"{where}: {p.reason}")
            elif measured:
                warnings.append(f"{where}: {p.reason}")
    return blocking, warnings


def _qualified(
    q: Qualification,
    interactions: Mapping[int, _InteractionLike],
    checks: Iterable[ExpectedCheck],
) -> Iterator[tuple[ExpectedCheck, PathPolicy, tuple[int, ...]]]:
    """The checks that are a qualified path: an open check of a qualified interaction on the
    port its paths are measured on (one per host pair and direction)."""
    ports: dict[int, tuple[PathPolicy, int, tuple[int, ...]]] = {}
    for p in q.paths:
        inter = interactions.get(p.interaction)
        if inter is not None:
            port, tp = path_ports(p, inter)
            ports[p.interaction] = (p, port, tp)
    for c in checks:
        found = ports.get(c.spec.interaction)
        if found is not None and c.spec.port == found[1] and c.spec.expect == "open":
            yield c, found[0], found[2]


def plan_paths(
    q: Qualification,
    interactions: Mapping[int, _InteractionLike],
    checks: Iterable[ExpectedCheck],
) -> tuple[PathSpec, ...]:
    """The paths one agent qualifies, from its expected checks (at most MAX_PATHS)."""
    out = [
        PathSpec(
            interaction=c.spec.interaction,
            dst_role=c.spec.dst_role,
            dst_host=c.spec.dst_host,
            dst_address=c.spec.dst_address,
            port=c.spec.port,
            throughput_ports=tp,
            rtt_samples=q.rtt_samples,
            throughput_seconds=q.throughput_seconds,
            throughput_bytes_per_stream=q.throughput_bytes_per_stream,
        )
        for c, _, tp in _qualified(q, interactions, checks)
    ]
    return tuple(out[:MAX_PATHS])


def path_keys(
    q: Qualification,
    interactions: Mapping[int, _InteractionLike],
    checks: Iterable[ExpectedCheck],
) -> tuple[PathKey, ...]:
    """Every qualified path of a site (what :func:`verdicts` judges)."""
    return tuple(
        PathKey(
            c.spec.interaction,
            c.src_role,
            c.src_host,
            c.spec.dst_role,
            c.spec.dst_host,
            c.spec.port,
        )
        for c, _, _ in _qualified(q, interactions, checks)
    )


def newest_measurements(
    reports: Iterable[Sequence[PathMeasurement]],
) -> dict[tuple[int, str, str], PathMeasurement]:
    """The newest measurement per (interaction, src_host, dst_host) from the agents' reports;
    a throughput figure survives a newer measurement without one."""
    out: dict[tuple[int, str, str], PathMeasurement] = {}
    for paths in reports:
        for m in paths:
            key = (m.interaction, m.src_host, m.dst_host)
            old = out.get(key)
            if old is None:
                out[key] = m
                continue
            new, prev = (m, old) if m.at >= old.at else (old, m)
            if new.up_mbit_s is None and prev.up_mbit_s is not None:
                new = dataclasses.replace(
                    new,
                    up_mbit_s=prev.up_mbit_s,
                    down_mbit_s=prev.down_mbit_s,
                    throughput_streams=prev.throughput_streams,
                )
            out[key] = new
    return out


_MEASURED = (
    "mtu",
    "route_mtu",
    "icmp",
    "black_hole",
    "mtu_probes",
    "rtt_avg_s",
    "rtt_min_s",
    "rtt_max_s",
    "jitter_s",
    "loss",
    "rtt_samples",
    "up_mbit_s",
    "down_mbit_s",
    "throughput_streams",
    "error",
)


def to_dict(p: PathVerdict, iso: Callable[[float | None], str | None]) -> dict[str, Any]:
    """One path as the JSON report has it (report.schema.json, ``paths``)."""
    m = p.measurement
    return {
        "interaction": p.interaction,
        "src_role": p.src_role,
        "src_host": p.src_host,
        "dst_role": p.dst_role,
        "dst_host": p.dst_host,
        "port": p.port,
        "verdict": p.verdict,
        "required": p.required,
        "reason": p.reason,
        "measured_at": iso(m.at) if m is not None else None,
        "figures": [
            {
                "figure": f.figure,
                "value": f.value,
                "threshold": f.threshold,
                "margin": f.margin,
                "ok": f.ok,
                "unit": f.unit,
                "text": f.describe(),
            }
            for f in p.figures
        ],
        "measured": {k: getattr(m, k) for k in _MEASURED} if m is not None else None,
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _figure_cell(p: PathVerdict, name: Figure) -> str:
    f = p.figure(name)
    if f is None or f.value is None:
        return "-"
    v = _fmt(f.value, f.unit)
    if f.margin is None:
        return v
    sign = "+" if f.margin >= 0 else "-"
    return f"{v} ({sign}{_fmt(abs(f.margin), f.unit)}{'' if f.ok else ' FAIL'})"


def markdown_section(paths: Sequence[PathVerdict]) -> list[str]:
    """The report's "Interconnect qualification" section: one row per path, each figure
    with its distance to its threshold (+ inside, - beyond)."""
    out = [f"## Interconnect qualification ({len(paths)} paths)", ""]
    if not paths:
        return [*out, "No qualified data path in this site."]
    counts = {v: sum(p.verdict == v for p in paths) for v in ("pass", "fail", "unknown")}
    out += [
        f"{counts['pass']} pass, {counts['fail']} fail, {counts['unknown']} not measured. "
        "Each figure is followed by its distance to the threshold (+ inside, - beyond).",
        "",
        "| interaction | from | to | port | verdict | MTU | RTT | loss | up | down | why |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in paths:
        hole = " (black hole)" if p.measurement is not None and p.measurement.black_hole else ""
        verdict = p.verdict + ("" if p.required else ", not required")
        cells = [
            str(p.interaction),
            p.src_host,
            p.dst_host,
            str(p.port),
            verdict,
            _figure_cell(p, "mtu") + hole,
            _figure_cell(p, "rtt"),
            _figure_cell(p, "loss"),
            _figure_cell(p, "throughput_up"),
            _figure_cell(p, "throughput_down"),
            p.reason,
        ]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return out
