"""topology.yaml and the guest OS matrix as immutable, validated objects.

``load_spec(path)`` is the only way in: it refuses unknown keys, unknown roles, bad port
ranges, duplicate interaction ids, overlapping ports, a ``direction: both`` without its
``reason`` and unknown matrix statuses, each as ``file:line: what is wrong``
(:class:`controller.sourced.InputError`). A flow of direction ``both`` runs both ways in
:meth:`Spec.flows` (each :class:`FlowRef` with ``stated=False``).

Every count and text is bounded (the file is untrusted input, like the YAML it is read
from, see :mod:`.sourced`): at most :data:`MAX_ROLES` roles, :data:`MAX_FLOWS` flows and
:data:`MAX_SPEC_PORTS` ports over all flows (the shipped topology: 12 roles, 38 flows, 140
ports), and texts of at most :data:`MAX_NAME` / :data:`MAX_TEXT` characters. How many
checks a site may expand to is the policy's (``max_checks_per_site``, ``max_checks_per_plan``:
:func:`.expand.check_size`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from netcheck.agent.wire import Expectation, Service
from netcheck.controller.interconnect import Qualification, check_qualification
from netcheck.controller.limits import HISTORY_RETENTION_SECONDS
from netcheck.controller.sourced import InputError, Problem, Sourced, load_yaml, raise_if, validate

MAX_ROLES = 64
MAX_INTERACTIONS = 1_000
MAX_FLOWS = 1_000  # over all interactions
MAX_SPEC_PORTS = 262_144  # ports summed over all flows: four full 1-65535 ranges
MAX_MODES = 64
MAX_MATRIX_ROWS = 5_000
MAX_KEY = 64  # a role's key: it is part of check ids and metric labels
MAX_NAME = 200  # names and titles
MAX_TEXT = 2_000  # purposes, authentication and authorization notes
MAX_INTERACTION_ID = 1_000_000

Key = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY)]
Name = Annotated[str, StringConstraints(max_length=MAX_NAME)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]

Site = Literal["user", "on_prem", "cloud"]
# "both": the spec does not say who connects; the flow is probed both ways (a site can pin
# one in its inventory: ``directions:``), and ``reason`` says why.
Direction = Literal["forward", "reverse", "both"]
BootMode = Literal["MBR", "UEFI", "UEFI Secure"]
MatrixColumn = Literal[
    "vcd_warm", "vcs_warm", "any_cold", "static_ip_vcd_cold", "static_ip_vcd_warm"
]
MATRIX_COLUMNS: tuple[MatrixColumn, ...] = (
    "vcd_warm",
    "vcs_warm",
    "any_cold",
    "static_ip_vcd_cold",
    "static_ip_vcd_warm",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Policy(_Frozen):
    freshness_seconds: float = Field(900, gt=0)
    warnings_block: bool = False
    probe_timeout_seconds: float = Field(2.0, gt=0, le=60)
    # Adaptive give-up time: a silent port waits probe_rtt_factor x the round trip measured
    # to its host (or role) in the same round, at least probe_min_timeout_seconds; 0 = off.
    probe_min_timeout_seconds: float = Field(0.0, ge=0, le=60)
    probe_rtt_factor: float = Field(10.0, ge=1, le=1000)
    probe_retries: int = Field(2, ge=0, le=10)
    probe_period_seconds: float = Field(300, gt=0)
    probe_concurrency: int = Field(512, ge=1, le=65536)
    # Caps on the expansion, counted (hosts x ports per flow) before anything is built.
    max_checks_per_site: int = Field(200_000, ge=1, le=1_000_000)
    max_checks_per_plan: int = Field(20_000, ge=1, le=100_000)
    # History (controller.history): flaps are counted over this window; the gate wants every
    # check of a mode passing for at least gate_min_passing_seconds (0: passing now is enough).
    flap_window_seconds: float = Field(3600, ge=60, le=HISTORY_RETENTION_SECONDS)
    gate_min_passing_seconds: float = Field(0, ge=0, le=HISTORY_RETENTION_SECONDS)


class Role(_Frozen):
    name: Name
    site: Site
    agent: bool


_PORTS = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


class Flow(_Frozen):
    ports: str
    service: Service = "tcp"
    direction: Direction = "forward"
    expect: Expectation = "open"
    purpose: Text = ""
    reason: Text = ""  # direction "both" only: why the direction is not stated

    @field_validator("ports", mode="before")
    @classmethod
    def _ports_text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("ports")
    @classmethod
    def _port_range(cls, v: str) -> str:
        m = _PORTS.match(v)
        if not m:
            raise ValueError(f"{v!r} is not a port or a range like 8000-8010")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            raise ValueError(f"{v!r}: ports are 1-65535")
        if lo > hi:
            raise ValueError(f"{v!r}: the range runs backwards")
        return f"{lo}-{hi}" if hi != lo else str(lo)

    @property
    def port_range(self) -> range:
        lo, _, hi = self.ports.partition("-")
        return range(int(lo), int(hi or lo) + 1)


class Interaction(_Frozen):
    id: int = Field(ge=1, le=MAX_INTERACTION_ID)
    title: Name
    source: Key
    destination: Key
    authentication: Text = ""
    authorization: Text = ""
    interconnect: bool = False
    flows: tuple[Flow, ...] = Field(min_length=1, max_length=MAX_FLOWS)

    def ends(self, flow: Flow) -> tuple[str, str]:
        """(connecting role, listening role) of one of this interaction's flows (for a flow of
        direction "both", the title's order: the first of :meth:`directions`)."""
        if flow.direction == "reverse":
            return self.destination, self.source
        return self.source, self.destination

    def directions(self, flow: Flow) -> tuple[tuple[str, str], ...]:
        """Every (connecting role, listening role) a flow is probed in: two for "both"."""
        if flow.direction == "both" and self.source != self.destination:
            return (self.source, self.destination), (self.destination, self.source)
        return (self.ends(flow),)


class Mode(_Frozen):
    title: Name
    interactions: tuple[int, ...] = Field(max_length=MAX_INTERACTIONS)
    matrix_columns: tuple[MatrixColumn, ...] = ()
    static_ip_column: MatrixColumn | None = None


class _TopologyFile(_Frozen):
    version: Literal[1]
    matrix: Name
    policy: Policy = Policy()
    # Interconnect qualification: thresholds per data interaction (controller.interconnect).
    qualification: Qualification = Qualification()
    roles: dict[Key, Role] = Field(max_length=MAX_ROLES)
    interactions: tuple[Interaction, ...] = Field(max_length=MAX_INTERACTIONS)
    modes: dict[Key, Mode] = Field(max_length=MAX_MODES)


Status = Literal["qualified", "not_qualified", "not_supported"]
_STATUS = re.compile(
    r"^(?:(?P<q>Qualified)(?:\s*\((?P<note>[^)]+)\))?"
    r"|Not Qualified\s*\((?P<ticket>[^)]+)\)"
    r"|(?P<ns>Not Supported))$"
)


class Support(_Frozen):
    """One cell of the matrix: a status, with the ticket or note the seed gives."""

    status: Status
    text: str
    ticket: str = ""
    note: str = ""

    @classmethod
    def parse(cls, text: str) -> Support:
        m = _STATUS.match(text.strip())
        if not m:
            raise ValueError(
                f"unknown status {text!r}; expected Qualified, 'Qualified (note)', "
                "'Not Qualified(TICKET)' or Not Supported"
            )
        if m.group("q"):
            return cls(status="qualified", text=text, note=m.group("note") or "")
        if m.group("ns"):
            return cls(status="not_supported", text=text)
        return cls(status="not_qualified", text=text, ticket=m.group("ticket"))


class _MatrixRowFile(_Frozen):
    family: Name
    os: Name
    boot: BootMode
    vcd_warm: Name
    vcs_warm: Name
    any_cold: Name
    static_ip_vcd_cold: Name
    static_ip_vcd_warm: Name


class _MatrixFile(_Frozen):
    version: Literal[1]
    rows: tuple[_MatrixRowFile, ...] = Field(max_length=MAX_MATRIX_ROWS)


class MatrixRow(_Frozen):
    family: str
    os: str
    boot: BootMode
    support: dict[MatrixColumn, Support]


@dataclass(frozen=True)
class FlowRef:
    """One flow of the spec with its resolved ends."""

    interaction: Interaction
    flow: Flow
    src_role: str  # the role that connects
    dst_role: str  # the role that listens
    line: int = 0  # the line of the flow's ``ports`` in the topology file (0: unknown)
    # False for each of the two ways of a flow of direction "both" (the spec does not say).
    stated: bool = True

    @property
    def direction(self) -> str:
        """ "forward" or "reverse": which way this reference runs, relative to the title."""
        if self.flow.direction != "both":
            return self.flow.direction
        return "forward" if self.src_role == self.interaction.source else "reverse"


@dataclass(frozen=True)
class Spec:
    file: str
    policy: Policy
    roles: dict[str, Role]
    interactions: tuple[Interaction, ...]
    modes: dict[str, Mode]
    matrix: tuple[MatrixRow, ...]
    # (interaction id, flow index) -> the line of the flow's ``ports``, for errors
    flow_lines: dict[tuple[int, int], int] = field(default_factory=dict)
    qualification: Qualification = field(default_factory=Qualification)

    def flows(self) -> Iterator[FlowRef]:
        for inter in self.interactions:
            for j, flow in enumerate(inter.flows):
                line = self.flow_lines.get((inter.id, j), 0)
                for src, dst in inter.directions(flow):
                    yield FlowRef(inter, flow, src, dst, line, flow.direction != "both")

    def interaction(self, ident: int) -> Interaction:
        for inter in self.interactions:
            if inter.id == ident:
                return inter
        raise KeyError(ident)

    def matrix_row(self, os_name: str, boot: str) -> MatrixRow | None:
        """The matrix row of a guest's OS and boot mode, or None: :func:`matrix_key` says how
        the names are matched (case, spacing and a few aliases do not matter)."""
        return self._matrix_index.get(*matrix_key(os_name, boot))

    @cached_property
    def _matrix_index(self) -> MatrixIndex:
        return MatrixIndex.build(self.matrix)

    def closest_matrix_rows(self, os_name: str, boot: str, n: int = 3) -> list[str]:
        """The ``n`` matrix rows ("OS BOOT") most like an unknown pair, best first."""
        os_key, boot_key = matrix_key(os_name, boot)
        wanted = f"{os_key} {boot_key}"
        by_text = {f"{k[0]} {k[1]}": r for k, r in self._matrix_index.rows.items()}
        close = difflib.get_close_matches(wanted, list(by_text), n=n, cutoff=0.5)
        if not close:  # at least the rows of the same OS, or of the same boot mode
            close = [t for t, r in by_text.items() if matrix_key(r.os, r.boot)[0] == os_key][:n]
        return [f"{by_text[t].os} {by_text[t].boot}" for t in close]

    def modes_of(self, interaction: int) -> tuple[str, ...]:
        return tuple(name for name, m in self.modes.items() if interaction in m.interactions)


def _check_size(src: Sourced, topo: _TopologyFile) -> list[Problem]:
    """The totals over all interactions: flows and ports (each bounded, see the docstring)."""
    flows = ports = 0
    for i, inter in enumerate(topo.interactions):
        for j, flow in enumerate(inter.flows):
            flows += 1
            ports += len(flow.port_range)
            at = ("interactions", i, "flows", j)
            if flows > MAX_FLOWS:
                return [src.problem(at, f"more than {MAX_FLOWS:,} flows; the limit")]
            if ports > MAX_SPEC_PORTS:
                return [
                    src.problem(
                        (*at, "ports"),
                        f"interaction {inter.id}: ports {flow.ports} bring the flows to more "
                        f"than {MAX_SPEC_PORTS:,} ports in all, the limit",
                    )
                ]
    return []


def _check_topology(src: Sourced, topo: _TopologyFile) -> list[Problem]:
    problems = _check_size(src, topo)
    if problems:
        return problems
    seen_ids: dict[int, int] = {}
    # (connecting role, listening role) -> the port ranges given so far: (lo, hi, id, ports)
    seen: dict[tuple[str, str], list[tuple[int, int, int, str]]] = {}
    for i, inter in enumerate(topo.interactions):
        at: tuple[str | int, ...] = ("interactions", i)
        if inter.id in seen_ids:
            problems.append(
                src.problem(
                    (*at, "id"),
                    f"duplicate interaction id {inter.id} (first at line {seen_ids[inter.id]})",
                )
            )
        else:
            seen_ids[inter.id] = src.line((*at, "id"))
        for key in ("source", "destination"):
            role = getattr(inter, key)
            if role not in topo.roles:
                problems.append(
                    src.problem(
                        (*at, key),
                        f"interaction {inter.id}: unknown role {role!r} "
                        f"(roles are: {', '.join(sorted(topo.roles))})",
                    )
                )
        for j, flow in enumerate(inter.flows):
            if (flow.direction == "both") != bool(flow.reason.strip()):
                problems.append(
                    src.problem(
                        (*at, "flows", j),
                        f"interaction {inter.id}, ports {flow.ports}: "
                        + (
                            "direction both needs a 'reason' (why the spec does not say who "
                            "connects)"
                            if flow.direction == "both"
                            else "'reason' is only for direction both"
                        ),
                    )
                )
            for s, d in inter.directions(flow):
                given = seen.setdefault((s, d), [])
                lo, hi = flow.port_range.start, flow.port_range.stop - 1
                # the lowest port of this flow given before, and by which flow first
                clash = min(
                    (
                        (max(lo, a), n)
                        for n, (a, b, _, _) in enumerate(given)
                        if a <= hi and lo <= b
                    ),
                    default=None,
                )
                if clash is not None:
                    port, n = clash
                    _, _, first_id, first_ports = given[n]
                    problems.append(
                        src.problem(
                            (*at, "flows", j, "ports"),
                            f"interaction {inter.id}: port {port} from {s} to {d} overlaps "
                            f"ports {first_ports} of interaction {first_id}",
                        )
                    )
                    hi = port - 1  # the ports before the clash count as given
                if lo <= hi:
                    given.append((lo, hi, inter.id, flow.ports))
    for name, mode in topo.modes.items():
        for k, ident in enumerate(mode.interactions):
            if ident not in seen_ids:
                problems.append(
                    src.problem(
                        ("modes", name, "interactions", k),
                        f"mode {name!r} names interaction {ident}, which does not exist",
                    )
                )
    return problems


# Matching a guest's OS and boot mode to the matrix: both sides are compared by key, lower
# case without spaces, "_" or "-" ("rhel 7.4" is "RHEL 7.4", "oracle linux 7.7" is
# "Oracle_Linux 7.7", "SLES 12 SP5" is "SLES 12-SP5", "uefi secure" is "UEFI Secure"), and a
# row whose OS ends in parentheses also answers without them ("Windows Server 2016" is
# "Windows Server 2016 (64 bit)", "CentOS 7.6" is "CentOS 7.6(1810)"). When the key is not a
# row, the aliases below are tried, one at a time: a leading spelling, as a key, and what it
# stands for in the matrix.
OS_ALIASES: tuple[tuple[str, str], ...] = (
    ("redhatenterpriselinux", "rhel"),
    ("redhat", "rhel"),
    ("ubuntu", "ubuntuserver"),  # "Ubuntu 20.04"
    ("photon", "photonos"),  # "Photon 4"
    ("ol", "oraclelinux"),  # "OL 7.7"
    ("oel", "oraclelinux"),
    ("windows20", "windowsserver20"),  # "Windows 2016": 2012 R2, 2016, 2019 carry "Server"
    ("windowsserver2008", "windows2008"),  # ... and 2008 R2 does not
    ("win2008", "windows2008"),
    ("win20", "windowsserver20"),  # "Win2019"
)
BOOT_ALIASES: dict[str, str] = {
    "bios": "mbr",
    "legacy": "mbr",
    "legacybios": "mbr",
    "efi": "uefi",
    "secureboot": "uefisecure",
    "uefisecureboot": "uefisecure",
}
_KEY_DROP = re.compile(r"[\s_-]+")


def _key(text: str) -> str:
    return _KEY_DROP.sub("", text).casefold()


def matrix_key(os_name: str, boot: str) -> tuple[str, str]:
    """The key a guest's (OS, boot mode) is looked up by (before the OS aliases)."""
    b = _key(boot)
    return _key(os_name), BOOT_ALIASES.get(b, b)


_PARENS = re.compile(r"\([^()]*\)$")


@dataclass(frozen=True)
class MatrixIndex:
    """The matrix rows by key: each row's own, and without a trailing "(...)" if unique."""

    rows: dict[tuple[str, str], MatrixRow]
    short: dict[tuple[str, str], MatrixRow]

    @classmethod
    def build(cls, matrix: tuple[MatrixRow, ...]) -> MatrixIndex:
        rows = {matrix_key(r.os, r.boot): r for r in matrix}
        short: dict[tuple[str, str], MatrixRow | None] = {}
        for (os_key, boot_key), r in rows.items():
            bare = _PARENS.sub("", os_key)
            if bare != os_key and (bare, boot_key) not in rows:
                k = (bare, boot_key)
                short[k] = None if k in short else r  # two rows share it: neither answers
        return cls(rows, {k: r for k, r in short.items() if r is not None})

    def _one(self, os_key: str, boot_key: str) -> MatrixRow | None:
        k = (os_key, boot_key)
        return self.rows.get(k) or self.short.get(k)

    def get(self, os_key: str, boot_key: str) -> MatrixRow | None:
        found = self._one(os_key, boot_key)
        for spelling, meaning in OS_ALIASES:
            if found is not None:
                break
            if os_key.startswith(spelling):
                found = self._one(meaning + os_key[len(spelling) :], boot_key)
        return found


def load_matrix(path: str | Path) -> tuple[MatrixRow, ...]:
    src = load_yaml(path)
    parsed = validate(src, _MatrixFile)
    rows: list[MatrixRow] = []
    problems: list[Problem] = []
    seen: dict[tuple[str, str], int] = {}
    for i, row in enumerate(parsed.rows):
        support: dict[MatrixColumn, Support] = {}
        for col in MATRIX_COLUMNS:
            try:
                support[col] = Support.parse(getattr(row, col))
            except ValueError as exc:
                problems.append(src.problem(("rows", i, col), f"{col}: {exc}"))
        key = (row.os, row.boot)
        if key in seen:
            problems.append(
                src.problem(
                    ("rows", i),
                    f"duplicate row for {row.os} {row.boot} (first at line {seen[key]})",
                )
            )
        seen[key] = src.line(("rows", i))
        if len(support) == len(MATRIX_COLUMNS):
            rows.append(MatrixRow(family=row.family, os=row.os, boot=row.boot, support=support))
    raise_if(problems)
    return tuple(rows)


def load_spec(path: str | Path) -> Spec:
    """Load and validate topology.yaml and the matrix file it names."""
    src = load_yaml(path)
    topo = validate(src, _TopologyFile)
    raise_if(_check_topology(src, topo))
    raise_if(check_qualification(src, topo.qualification, topo.interactions))
    matrix_path = Path(path).parent / topo.matrix
    if not matrix_path.is_file():
        raise InputError([src.problem(("matrix",), f"matrix file {topo.matrix!r} not found")])
    matrix = load_matrix(matrix_path)
    return Spec(
        file=str(path),
        policy=topo.policy,
        roles=topo.roles,
        interactions=tuple(sorted(topo.interactions, key=lambda i: i.id)),
        modes=topo.modes,
        matrix=matrix,
        flow_lines={
            (inter.id, j): src.line(("interactions", i, "flows", j, "ports"))
            for i, inter in enumerate(topo.interactions)
            for j in range(len(inter.flows))
        },
        qualification=topo.qualification,
    )
