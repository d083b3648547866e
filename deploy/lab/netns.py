"""Create and remove the lab's network namespaces, links, routes and firewall rules.

Everything is named with the ``nclab-`` prefix, so :func:`leftover_namespaces` finds what an
earlier run left behind even after a crash. No link ever joins the host's own namespace:
veth pairs are created directly inside the namespaces they join.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from deploy.lab.layout import (
    CONTROLLER_ADDRESS,
    INTERCONNECT,
    MGMT_NET,
    PREFIX,
    ROUTERS,
    SITE_NET,
    SITE_ROUTER,
    Layout,
    ctl_netns,
    router_netns,
)


class LabError(RuntimeError):
    """A command that builds the lab failed."""


@dataclass(frozen=True)
class Batch:
    """``ip -batch`` lines to run inside one namespace (None: the host's, for netns/link adds)."""

    netns: str | None
    lines: tuple[str, ...]


def run(cmd: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        list(cmd), input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def run_batch(batch: Batch) -> None:
    if not batch.lines:
        return
    cmd = ["ip", "-batch", "-"] if batch.netns is None else ["ip", "-n", batch.netns, "-batch", "-"]
    run(cmd, stdin="\n".join(batch.lines) + "\n")


def build_plan(layout: Layout) -> tuple[Batch, ...]:
    """The ``ip`` commands that build the lab, in order. Pure."""
    pre = layout.prefix
    ctl = ctl_netns(pre)
    routers = [router_netns(r, pre) for r in ROUTERS]
    namespaces = [ctl, *routers, *(h.netns for h in layout.hosts)]
    create = [f"netns add {ns}" for ns in namespaces]
    links: list[str] = []
    # The interconnect between the two routers.
    prem, cloud = routers
    links.append(f"link add ic netns {prem} type veth peer name ic netns {cloud}")
    # The management bridge's ports, one per host, and each host's site link to its router.
    for h in layout.hosts:
        links.append(f"link add mgmt0 netns {h.netns} type veth peer name m{h.index} netns {ctl}")
        links.append(
            f"link add eth0 netns {h.netns} type veth peer name h{h.index} "
            f"netns {router_netns(h.router, pre)}"
        )
    out = [Batch(None, tuple(create)), Batch(None, tuple(links))]
    mgmt_len = MGMT_NET.prefixlen
    bridge = ["link set lo up", "link add br0 type bridge", "link set br0 up"]
    bridge.append(f"addr add {CONTROLLER_ADDRESS}/{mgmt_len} dev br0")
    for h in layout.hosts:
        bridge += [f"link set m{h.index} master br0", f"link set m{h.index} up"]
    out.append(Batch(ctl, tuple(bridge)))
    ic_prem, ic_cloud = INTERCONNECT
    per_router: dict[str, list[str]] = {r: ["link set lo up", "link set ic up"] for r in ROUTERS}
    per_router["prem"].append(f"addr add {ic_prem}/30 dev ic")
    per_router["cloud"].append(f"addr add {ic_cloud}/30 dev ic")
    for site, net in SITE_NET.items():
        here = SITE_ROUTER[site]
        for r in ROUTERS:
            if r != here:
                via = ic_prem if here == "prem" else ic_cloud
                per_router[r].append(f"route add {net} via {via} dev ic")
    for h in layout.hosts:
        per_router[h.router] += [
            f"addr add {h.gateway}/32 dev h{h.index}",
            f"link set h{h.index} up",
            f"route add {h.address}/32 dev h{h.index} src {h.gateway}",
        ]
        out.append(
            Batch(
                h.netns,
                (
                    "link set lo up",
                    "link set eth0 up",
                    "link set mgmt0 up",
                    f"addr add {h.address}/32 dev eth0",
                    f"route add {h.gateway}/32 dev eth0 src {h.address}",
                    f"route add default via {h.gateway} dev eth0 src {h.address}",
                    f"addr add {h.mgmt_address}/{mgmt_len} dev mgmt0",
                ),
            )
        )
    for r in ROUTERS:
        out.append(Batch(router_netns(r, pre), tuple(per_router[r])))
    return tuple(out)


def sysctl(netns: str, key: str, value: str) -> None:
    run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{key}={value}"])


def create(layout: Layout, icmp_ratelimit: bool = False) -> None:
    """Build every namespace, link and route of ``layout`` (call :func:`destroy` first).

    Without ``icmp_ratelimit`` the routers answer every TCP traceroute probe
    (``net.ipv4.icmp_ratelimit=0``): Linux rate-limits ICMP errors per destination (about
    one a second after a small burst), which hides hops from a sweep. With it the routers
    keep the kernel's defaults of a fresh namespace, as a real router has them."""
    for batch in build_plan(layout):
        run_batch(batch)
    for r in ROUTERS:
        ns = router_netns(r, layout.prefix)
        sysctl(ns, "net.ipv4.ip_forward", "1")
        if not icmp_ratelimit:
            sysctl(ns, "net.ipv4.icmp_ratelimit", "0")


def read_sysctl(netns: str, key: str) -> str:
    return run(["ip", "netns", "exec", netns, "sysctl", "-n", key]).strip()


def apply_ruleset(netns: str, script: str) -> None:
    """Load an nftables script inside ``netns``."""
    run(["ip", "netns", "exec", netns, "nft", "-f", "-"], stdin=script)


def apply_firewall(router: str, script: str, prefix: str = PREFIX) -> None:
    apply_ruleset(router_netns(router, prefix), script)


def list_ruleset(router: str, prefix: str = PREFIX) -> str:
    return run(["ip", "netns", "exec", router_netns(router, prefix), "nft", "list", "ruleset"])


def has_firewall(router: str, table: str, prefix: str = PREFIX) -> bool:
    """Whether the router's namespace holds nftables table ``inet TABLE`` now."""
    return has_table(router_netns(router, prefix), table)


def has_table(ns: str, table: str) -> bool:
    """Whether namespace ``ns`` holds nftables table ``inet TABLE`` now."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "list", "table", "inet", table],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return proc.returncode == 0


def leftover_namespaces(prefix: str = PREFIX) -> tuple[str, ...]:
    """The namespaces a lab with ``prefix`` makes (ctl, rt-*, h<N>) that exist now."""
    ours = re.compile(rf"^{re.escape(prefix)}(?:ctl|rt-[a-z]+|h\d+)$")
    out = run(["ip", "netns", "list"], check=False)
    names = (line.split()[0] for line in out.splitlines() if line.strip())
    return tuple(n for n in names if ours.match(n))


def pids_in(netns: str) -> tuple[int, ...]:
    out = run(["ip", "netns", "pids", netns], check=False)
    return tuple(int(x) for x in out.split() if x.isdigit())


def delete_namespaces(names: Sequence[str]) -> None:
    for ns in names:
        run(["ip", "netns", "del", ns], check=False)
