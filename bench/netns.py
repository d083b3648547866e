"""Two hosts and a router in network namespaces (``ncbench-*``), a firewall on the router.

``src`` (198.18.200.2) -- ``rt`` (198.18.200.1 | 198.18.200.5) -- ``dst`` (198.18.200.6), no
link to the host's network. The router's nftables table ``inet ncbench`` drops the given
destination ports. Everything is deleted on exit, also after a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
from collections.abc import Iterator

from bench.cmd import BenchError, sh

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


def delete_all() -> None:
    """Remove any ``ncbench-`` namespace left over (only ours: the prefix is ours)."""
    listed = sh("ip", "netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ", 1)[0].strip()
        if name.startswith(PREFIX):
            sh("ip", "netns", "del", name, check=False)


def _veth(a_ns: str, a_if: str, b_ns: str, b_if: str) -> None:
    sh(
        "ip",
        "link",
        "add",
        a_if,
        "netns",
        a_ns,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b_ns,
    )


def _addr(ns: str, dev: str, cidr: str) -> None:
    sh("ip", "-n", ns, "addr", "add", cidr, "dev", dev)
    sh("ip", "-n", ns, "link", "set", dev, "up")


@contextlib.contextmanager
def pair(drop_ports: tuple[int, int]) -> Iterator[Pair]:
    """The three namespaces, with ``drop_ports`` (low, high) dropped at the router."""
    delete_all()
    try:
        for ns in (SRC, RT, DST):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        _veth(SRC, "ncb0", RT, "ncb-s")
        _veth(DST, "ncb0", RT, "ncb-d")
        _addr(SRC, "ncb0", f"{SRC_ADDR}/30")
        _addr(RT, "ncb-s", f"{RT_SRC_ADDR}/30")
        _addr(RT, "ncb-d", f"{RT_DST_ADDR}/30")
        _addr(DST, "ncb0", f"{DST_ADDR}/30")
        sh("ip", "-n", SRC, "route", "add", "default", "via", RT_SRC_ADDR)
        sh("ip", "-n", DST, "route", "add", "default", "via", RT_DST_ADDR)
        sh("ip", "netns", "exec", RT, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        p = subprocess.run(
            ["ip", "netns", "exec", RT, "nft", "-f", "-"],
            input=nft_drop(*drop_ports),
            capture_output=True,
            text=True,
            timeout=30,
        )
        if p.returncode != 0:
            raise BenchError(f"nft in {RT}: {p.stderr.strip()}")
        yield Pair(SRC, DST, RT, SRC_ADDR, DST_ADDR)
    finally:
        for ns in (SRC, RT, DST):
            sh("ip", "netns", "del", ns, check=False)
