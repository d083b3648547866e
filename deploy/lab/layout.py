"""The lab's hosts and addresses, derived from topology.yaml. Pure functions.

Addressing (all from 198.18.0.0/15, reserved for benchmarking):

* one subnet per site: user 198.18.10.0/24, on-premise 198.18.1.0/24, cloud 198.18.2.0/24;
  the site's router holds ``.1``. Every host has its own point-to-point veth to its site's
  router (a /32 host route there), so even traffic between two hosts of the same site is
  routed and crosses the router's nftables ``forward`` chain.
* two routers: ``prem`` (serves the user and on-premise sites) and ``cloud``, joined by the
  "interconnect" link 198.18.254.0/30 (interaction 9 really crosses it).
* a management subnet 198.19.0.0/24 on a bridge in the ``ctl`` namespace (the controller at
  198.19.0.1); every host has a second veth on it. It is never filtered by a scenario.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import yaml

PREFIX = "nclab-"
MGMT_NET = ipaddress.IPv4Network("198.19.0.0/24")
CONTROLLER_ADDRESS = "198.19.0.1"
CONTROLLER_PORT = 8400
INTERCONNECT = ("198.18.254.1", "198.18.254.2")  # prem side, cloud side (/30)
SITE_NET = {
    "user": ipaddress.IPv4Network("198.18.10.0/24"),
    "on_prem": ipaddress.IPv4Network("198.18.1.0/24"),
    "cloud": ipaddress.IPv4Network("198.18.2.0/24"),
}
SITE_ROUTER = {"user": "prem", "on_prem": "prem", "cloud": "cloud"}
ROUTERS = ("prem", "cloud")
# Roles that get two hosts, so the host-pair expansion shows.
MANY = frozenset({"prem_esxi", "cloud_esxi", "cloud_vm", "prem_vm"})
# Last octet of a role's first host (the inventory example's numbering).
_OCTET = {
    "user": 10,
    "pio": 10,
    "prem_vcenter": 20,
    "cloud_vcenter": 20,
    "prem_manager": 30,
    "cloud_manager": 30,
    "prem_esxi_manager": 40,
    "cloud_cache": 40,
    "prem_esxi": 51,
    "cloud_esxi": 51,
    "prem_vm": 101,
    "cloud_vm": 101,
}
# Guest facts for the VM hosts (rows of guest_os_matrix.yaml), for the per-VM gate.
_VM_FACTS: dict[str, tuple[dict[str, object], ...]] = {
    "prem_vm": (
        {"os": "RHEL 7.4", "boot": "UEFI", "static_ip": True},
        {"os": "Windows Server 2016 (64 bit)", "boot": "UEFI"},
    ),
}


@dataclass(frozen=True)
class LabHost:
    role: str
    site: str
    name: str  # inventory host name, e.g. "prem-esxi-2"
    index: int  # unique small number: interface names and the management address
    address: str  # site address
    mgmt_address: str
    agent: bool  # runs a netcheck agent (else a stand-in service)
    facts: tuple[tuple[str, object], ...] = ()
    prefix: str = PREFIX

    @property
    def netns(self) -> str:
        return f"{self.prefix}h{self.index}"

    @property
    def router(self) -> str:
        return SITE_ROUTER[self.site]

    @property
    def gateway(self) -> str:
        return str(SITE_NET[self.site].network_address + 1)


@dataclass(frozen=True)
class Layout:
    hosts: tuple[LabHost, ...]
    prefix: str = PREFIX

    def of_role(self, role: str) -> tuple[LabHost, ...]:
        return tuple(h for h in self.hosts if h.role == role)

    def by_name(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)


def router_netns(router: str, prefix: str = PREFIX) -> str:
    return f"{prefix}rt-{router}"


def ctl_netns(prefix: str = PREFIX) -> str:
    return f"{prefix}ctl"


def build_layout(roles: dict[str, tuple[str, bool]], prefix: str = PREFIX) -> Layout:
    """Hosts for ``roles`` (role -> (site, agent)), in the order given."""
    hosts: list[LabHost] = []
    for role, (site, agent) in roles.items():
        if site not in SITE_NET:
            raise ValueError(f"role {role!r}: the lab has no subnet for site {site!r}")
        count = 2 if role in MANY else 1
        base = _OCTET.get(role, 150 + len(hosts))
        facts = _VM_FACTS.get(role, ())
        for k in range(count):
            index = len(hosts) + 1
            stem = role.replace("_", "-")
            name = stem if count == 1 else f"{stem}-{k + 1}"
            fact = tuple(sorted(facts[k].items())) if k < len(facts) else ()
            hosts.append(
                LabHost(
                    role=role,
                    site=site,
                    name=name,
                    index=index,
                    address=str(SITE_NET[site].network_address + base + k),
                    mgmt_address=str(MGMT_NET.network_address + 10 + index),
                    agent=agent,
                    facts=fact,
                    prefix=prefix,
                )
            )
    return Layout(tuple(hosts), prefix)


def roles_of_topology(path: str) -> dict[str, tuple[str, bool]]:
    """role -> (site, agent) from topology.yaml (the spec's own loader validates it)."""
    from netcheck.controller.spec import load_spec

    spec = load_spec(path)
    return {name: (r.site, r.agent) for name, r in spec.roles.items()}


def inventory_yaml(layout: Layout, site: str = "nclab") -> str:
    """The inventory file matching the lab's addressing."""
    hosts: dict[str, list[dict[str, object]]] = {}
    for h in layout.hosts:
        entry: dict[str, object] = {"name": h.name, "address": h.address}
        entry.update(dict(h.facts))
        hosts.setdefault(h.role, []).append(entry)
    doc = {"version": 1, "site": site, "hosts": hosts}
    head = "# Generated by `python -m deploy.lab up` from the lab's addressing. Do not edit.\n"
    return head + yaml.safe_dump(doc, sort_keys=False)
