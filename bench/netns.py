"""Two hosts and a router in network namespaces (``ncbench-*``), a firewall on the router.

``src`` (198.18.200.2) -- ``rt`` (198.18.200.1 | 198.18.200.5) -- ``dst`` (198.18.200.6), no
link to the host's network. The router's nftables table ``inet ncbench`` drops the given
destination ports. Built with deploy/lab's namespace primitives (``ip -batch`` per namespace,
the same error reporting); these three namespaces are deleted on exit, also after a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

from deploy.lab.netns import Batch, delete_namespaces, run, run_batch

PREFIX = "ncbench-"
SRC, RT, DST = f"{PREFIX}src", f"{PREFIX}rt", f"{PREFIX}dst"
SRC_ADDR, RT_SRC_ADDR = "198.18.200.2", "198.18.200.1"
DST_ADDR, RT_DST_ADDR = "198.18.200.6", "198.18.200.5"


@dataclasses.dataclass(frozen=True)
class Pair:
    src_netns: str
    dst_netns: str
    router_netns: str
    src_address: str
    dst_address: str


def nft_drop(lo: int, hi: int) -> str:
    return (
        "table inet ncbench {\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f"    tcp dport {lo}-{hi} drop\n"
        "  }\n"
        "}\n"
    )


def build_plan() -> tuple[Batch, ...]:
    """The ``ip`` commands of the pair, in order. Pure."""
    return (
        Batch(None, tuple(f"netns add {ns}" for ns in (SRC, RT, DST))),
        Batch(
            None,
            (
                f"link add ncb0 netns {SRC} type veth peer name ncb-s netns {RT}",
                f"link add ncb0 netns {DST} type veth peer name ncb-d netns {RT}",
            ),
        ),
        Batch(
            SRC,
            (
                "link set lo up",
                f"addr add {SRC_ADDR}/30 dev ncb0",
                "link set ncb0 up",
                f"route add default via {RT_SRC_ADDR}",
            ),
        ),
        Batch(
            DST,
            (
                "link set lo up",
                f"addr add {DST_ADDR}/30 dev ncb0",
                "link set ncb0 up",
                f"route add default via {RT_DST_ADDR}",
            ),
        ),
        Batch(
            RT,
            (
                "link set lo up",
                f"addr add {RT_SRC_ADDR}/30 dev ncb-s",
                "link set ncb-s up",
                f"addr add {RT_DST_ADDR}/30 dev ncb-d",
                "link set ncb-d up",
            ),
        ),
    )


@contextlib.contextmanager
def pair(drop_ports: tuple[int, int]) -> Iterator[Pair]:
    """The three namespaces, with ``drop_ports`` (low, high) dropped at the router."""
    delete_namespaces((SRC, RT, DST))  # a crashed run's leftovers (only these three names)
    try:
        for batch in build_plan():
            run_batch(batch)
        run(["ip", "netns", "exec", RT, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        run(["ip", "netns", "exec", RT, "nft", "-f", "-"], stdin=nft_drop(*drop_ports))
        yield Pair(SRC, DST, RT, SRC_ADDR, DST_ADDR)
    finally:
        delete_namespaces((SRC, RT, DST))
