"""A scenario's nftables scripts: one per router (filter + source NAT), one per host.

Each script replaces the lab's table ``inet nclab`` as a whole (``table``, ``delete
table``, then the new table), so applying it twice changes nothing. Pure functions.

* a router: chain ``forward`` (the scenario's router rules, first match decides) and, when
  the scenario translates flows there, chain ``postrouting`` (type nat: ``masquerade`` or
  ``snat ip to ADDRESS``). The filter sees the original addresses: forward runs before
  postrouting.
* a host: chain ``input`` with the ``at: host`` rules aimed at that host: the host's own
  firewall. Netfilter's input hook runs after the packet taps, so a capture on the host's
  interface sees a SYN that this chain then drops or rejects.
"""

from __future__ import annotations

from collections.abc import Iterable

from deploy.lab.scenario import NFT_TABLE, Block, Nat
from netcheck.controller.ports import port_ranges

VERDICT: dict[str, str] = {
    "drop": "drop",
    "reset": "reject with tcp reset",
    "prohibit": "reject with icmp type admin-prohibited",
    "host-unreachable": "reject with icmp type host-unreachable",
}


def _match(src: Iterable[str], dst: Iterable[str], ports: tuple[int, ...]) -> str:
    return (
        f"ip saddr {{ {', '.join(src)} }} ip daddr {{ {', '.join(dst)} }} "
        f"tcp dport {{ {port_ranges(ports)} }} counter"
    )


def _comment(origin: str) -> str:
    return f'comment "{origin[-120:]}"'


def _filter(blocks: Iterable[Block]) -> list[str]:
    return [
        f"{_match(b.src, b.dst, b.ports)} {VERDICT[b.action]} {_comment(b.origin)}" for b in blocks
    ]


def _table(chains: list[str]) -> str:
    lines = [f"table inet {NFT_TABLE}", f"delete table inet {NFT_TABLE}"]
    lines += [f"table inet {NFT_TABLE} {{", *chains, "}", ""]
    return "\n".join(lines)


def _chain(name: str, head: str, rules: list[str]) -> list[str]:
    return [f"  chain {name} {{", f"    {head}", *(f"    {r}" for r in rules), "  }"]


def router_ruleset(blocks: tuple[Block, ...], router: str, nat: tuple[Nat, ...] = ()) -> str:
    """The nftables script for ``router``."""
    rules = _filter(b for b in blocks if b.router == router)
    chains = _chain("forward", "type filter hook forward priority filter; policy accept;", rules)
    nats = [
        f"{_match(n.src, n.dst, n.ports)} "
        f"{'masquerade' if n.to is None else f'snat ip to {n.to}'} {_comment(n.origin)}"
        for n in nat
        if n.router == router
    ]
    if nats:
        head = "type nat hook postrouting priority srcnat; policy accept;"
        chains += _chain("postrouting", head, nats)
    return _table(chains)


def host_ruleset(blocks: tuple[Block, ...]) -> str:
    """The nftables script of one host's own firewall (its ``at: host`` rules)."""
    head = "type filter hook input priority filter; policy accept;"
    return _table(_chain("input", head, _filter(blocks)))
