"""A customer site: which hosts play which role (inventory.yaml).

topology.yaml is the product's spec; the inventory is the customer's. ``load_inventory``
checks it against the spec: roles must exist, host names are unique, addresses are IP
addresses, and a VM gives both its OS and boot mode or neither. An OS or boot mode the guest
OS matrix does not know (matched as :func:`.spec.matrix_key` says) is not an error: it is
one of the inventory's ``warnings`` (file:line, with the closest rows) and makes only that
VM's gate undecided. Two optional sections: ``network:`` (per site, the routers and
firewalls with their addresses, which name the devices a diagnosis finds) and
``directions:`` (per interaction, who connects on a flow the spec leaves at ``direction:
both``). A site has at most :data:`MAX_HOSTS` hosts (the file is untrusted input: see
:mod:`.sourced` for the YAML bounds, :func:`.expand.check_size` for the checks a site may
expand to).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from netcheck.controller.sourced import (
    InputError,
    Problem,
    Sourced,
    load_yaml,
    raise_if,
    validate,
)
from netcheck.controller.spec import MAX_NAME, MAX_ROLES, Flow, Name, Site, Spec

# Network devices (routers and firewalls) in the optional `network:` section, and addresses
# per device.
MAX_DEVICES = 1_000
MAX_DEVICE_ADDRESSES = 64
# Hosts in one inventory. The bench's largest site has 1,014 (1,000 agents); 10,000 hosts
# load in about half a second here, and the checks they expand to are capped by the policy.
MAX_HOSTS = 10_000


class Host(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    address: str = Field(max_length=64)  # an IPv6 address with a zone is at most ~60
    # Guest VM facts, used by the per-VM gate (guest OS support matrix).
    os: Name | None = None
    boot: Name | None = None  # matched to the matrix as spec.matrix_key says
    static_ip: bool = False

    @field_validator("address")
    @classmethod
    def _ip(cls, v: str) -> str:
        return _ip_address(v)


def _ip_address(v: str) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address") from None


class NetworkDevice(BaseModel):
    """A router or firewall of the site (``network:``): names the device a diagnosis finds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=MAX_NAME)
    kind: Literal["router", "firewall"]
    addresses: tuple[Annotated[str, Field(max_length=64)], ...] = Field(
        min_length=1, max_length=MAX_DEVICE_ADDRESSES
    )

    @field_validator("addresses")
    @classmethod
    def _ips(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_ip_address(a) for a in v)


class DirectionPin(BaseModel):
    """Who connects on a flow whose direction the spec does not state (``direction: both``),
    as this site knows it: ``from`` is the connecting role."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    ports: str = Field(max_length=32)
    from_: str = Field(alias="from", min_length=1, max_length=64)

    @field_validator("ports", mode="before")
    @classmethod
    def _ports_text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


def _pins(v: object) -> object:
    """One pin or a list of them, per interaction."""
    if isinstance(v, dict):
        return {k: [x] if isinstance(x, dict) else x for k, x in v.items()}
    return v


class _InventoryFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    site: str = Field("site", min_length=1, max_length=MAX_NAME)
    hosts: dict[str, tuple[Host, ...]] = Field(max_length=MAX_ROLES)
    # site (user | on_prem | cloud) -> its routers and firewalls
    network: dict[Site, tuple[NetworkDevice, ...]] = Field(default_factory=dict, max_length=3)
    # interaction id -> the pinned direction of its "both" flows
    directions: Annotated[
        dict[int, tuple[DirectionPin, ...]], BeforeValidator(_pins), Field(max_length=1_000)
    ] = Field(default_factory=dict)


@dataclass(frozen=True)
class Inventory:
    file: str
    site: str
    hosts: dict[str, tuple[Host, ...]]
    network: dict[str, tuple[NetworkDevice, ...]] = field(default_factory=dict)  # site -> devices
    # (interaction id, a "both" flow's ports) -> the role that connects, as the site pinned it
    pins: dict[tuple[int, str], str] = field(default_factory=dict)
    # file:line: what is wrong, for facts that make one VM's gate undecided (an OS or boot
    # mode the matrix does not know) and not the whole inventory invalid
    warnings: tuple[str, ...] = ()

    def device_names(self) -> dict[str, str]:
        """address -> the name of the router or firewall that holds it (``network:``)."""
        return {a: d.name for ds in self.network.values() for d in ds for a in d.addresses}

    @cached_property
    def _names(self) -> dict[str, tuple[str, Host]]:
        """name -> (role, host); the first one wins, as host names are unique per site."""
        out: dict[str, tuple[str, Host]] = {}
        for role, hosts in self.hosts.items():
            for host in hosts:
                out.setdefault(host.name, (role, host))
        return out

    def by_name(self, name: str) -> tuple[str, Host] | None:
        return self._names.get(name)

    @cached_property
    def _pairs(self) -> frozenset[tuple[str, str]]:
        return frozenset((role, h.name) for role, hosts in self.hosts.items() for h in hosts)

    def has(self, role: str, name: str) -> bool:
        """Whether ``name`` is a host of ``role`` (a set look-up: asked at every request)."""
        return (role, name) in self._pairs

    def of_role(self, role: str) -> tuple[Host, ...]:
        return self.hosts.get(role, ())


def _count_hosts(data: object) -> int:
    """Hosts in the raw file (before validation builds them): the entries of each role."""
    hosts = data.get("hosts") if isinstance(data, dict) else None
    if not isinstance(hosts, dict):
        return 0
    return sum(len(v) for v in hosts.values() if isinstance(v, list))


def load_inventory(path: str | Path, spec: Spec) -> Inventory:
    src = load_yaml(path)
    count = _count_hosts(src.data)
    if count > MAX_HOSTS:
        raise InputError(
            [src.problem(("hosts",), f"{count:,} hosts; an inventory holds at most {MAX_HOSTS:,}")]
        )
    inv = validate(src, _InventoryFile)
    problems: list[Problem] = []
    warnings: list[str] = []
    names: dict[str, int] = {}
    for role, hosts in inv.hosts.items():
        if role not in spec.roles:
            problems.append(
                src.problem(
                    ("hosts", role),
                    f"unknown role {role!r} (roles are: {', '.join(sorted(spec.roles))})",
                )
            )
        for i, host in enumerate(hosts):
            at = ("hosts", role, i)
            if host.name in names:
                problems.append(
                    src.problem(
                        (*at, "name"),
                        f"duplicate host name {host.name!r} (first at line {names[host.name]})",
                    )
                )
            names.setdefault(host.name, src.line((*at, "name")))
            if (host.os is None) != (host.boot is None):
                problems.append(
                    src.problem(at, f"host {host.name!r}: give both 'os' and 'boot', or neither")
                )
            elif (
                host.os is not None
                and host.boot is not None
                and spec.matrix_row(host.os, host.boot) is None
            ):
                warnings.append(str(src.problem((*at, "os"), unknown_to_matrix(spec, host))))
    problems += _check_network(src, inv)
    pins, more = _check_pins(src, inv, spec)
    problems += more
    raise_if(problems)
    return Inventory(
        file=str(path),
        site=inv.site,
        hosts=inv.hosts,
        network={str(k): v for k, v in inv.network.items()},
        pins=pins,
        warnings=tuple(warnings),
    )


def unknown_to_matrix(spec: Spec, host: Host) -> str:
    """Why a guest's gate is undecided: its OS and boot mode are no row of the matrix."""
    close = spec.closest_matrix_rows(host.os or "", host.boot or "")
    like = f"closest rows: {'; '.join(close)}" if close else "no row is close"
    return (
        f"host {host.name!r}: {host.os} {host.boot} is not in the guest OS matrix ({like}); "
        "its gate is undecided until the inventory names a row"
    )


def _check_pins(
    src: Sourced, inv: _InventoryFile, spec: Spec
) -> tuple[dict[tuple[int, str], str], list[Problem]]:
    """Each pin names a flow of direction "both" (its interaction and exact ports) and one of
    that interaction's two roles, once."""
    pins: dict[tuple[int, str], str] = {}
    problems: list[Problem] = []
    raw = src.data.get("directions") if isinstance(src.data, dict) else None
    for ident, given in inv.directions.items():
        listed = isinstance(raw, dict) and isinstance(raw.get(ident), list)
        for i, pin in enumerate(given):
            at: tuple[str | int, ...] = (
                ("directions", ident, i) if listed else ("directions", ident)
            )
            try:
                inter = spec.interaction(ident)
            except KeyError:
                problems.append(src.problem(at, f"no interaction {ident} in the spec"))
                continue
            try:
                ports = Flow(ports=pin.ports).ports
            except ValidationError:
                problems.append(
                    src.problem((*at, "ports"), f"{pin.ports!r} is not a port or a range")
                )
                continue
            both = [f.ports for f in inter.flows if f.direction == "both"]
            if ports not in both:
                which = ", ".join(both) if both else "none"
                problems.append(
                    src.problem(
                        (*at, "ports"),
                        f"interaction {ident} has no flow of direction both on ports {ports} "
                        f"(its flows of direction both: {which})",
                    )
                )
                continue
            if pin.from_ not in (inter.source, inter.destination):
                problems.append(
                    src.problem(
                        (*at, "from"),
                        f"interaction {ident}: 'from' is the connecting role, "
                        f"{inter.source} or {inter.destination}, not {pin.from_!r}",
                    )
                )
                continue
            if (ident, ports) in pins:
                problems.append(
                    src.problem(at, f"interaction {ident}, ports {ports}: pinned twice")
                )
            pins[(ident, ports)] = pin.from_
    return pins, problems


def _check_network(src: Sourced, inv: _InventoryFile) -> list[Problem]:
    """Device names and addresses are unique over the whole ``network:`` section."""
    problems: list[Problem] = []
    count = sum(len(ds) for ds in inv.network.values())
    if count > MAX_DEVICES:
        problems.append(src.problem(("network",), f"{count:,} devices; at most {MAX_DEVICES:,}"))
        return problems
    names: dict[str, int] = {}
    addresses: dict[str, int] = {}
    for site, devices in inv.network.items():
        for i, d in enumerate(devices):
            at = ("network", site, i)
            if d.name in names:
                problems.append(
                    src.problem(
                        (*at, "name"),
                        f"duplicate device name {d.name!r} (first at line {names[d.name]})",
                    )
                )
            names.setdefault(d.name, src.line((*at, "name")))
            for j, a in enumerate(d.addresses):
                if a in addresses:
                    problems.append(
                        src.problem(
                            (*at, "addresses", j),
                            f"device {d.name!r}: address {a} is already given "
                            f"(first at line {addresses[a]})",
                        )
                    )
                addresses.setdefault(a, src.line((*at, "addresses", j)))
    return problems
