"""Make a lab link look like a real interconnect: a lower MTU, a black hole, a rate limit.

* :func:`set_mtu`: an overlay's smaller MTU on one side of a veth (IPsec, VXLAN: 1400).
* :func:`block_frag_needed`: the router drops the ICMP fragmentation-needed it would send
  back (type 3 code 4, nftables ``output`` hook of the router itself), so packets too large
  for the link vanish silently: the classic PMTUD black hole. :func:`allow_frag_needed` undoes it.
* :func:`flush_pmtu`: forget the path MTUs a namespace learnt (route exceptions), so a
  second measurement does not read the first one's ICMP.
* :func:`shape`: ``tc tbf`` on a device (rate, burst, latency); :func:`tc_has` tells whether
  the kernel has a qdisc (tbf here, netem often not).

Root only; every command runs inside a namespace the caller created.
"""

from __future__ import annotations

import subprocess

from deploy.lab.netns import LabError, run

TABLE = "nclab_pmtu"


def set_mtu(netns: str, dev: str, mtu: int) -> None:
    run(["ip", "-n", netns, "link", "set", "dev", dev, "mtu", str(mtu)])


def block_frag_needed(netns: str) -> None:
    """Drop the ICMP fragmentation-needed errors this router sends (a black hole)."""
    script = (
        f"table inet {TABLE} {{\n"
        "  chain out { type filter hook output priority 0; policy accept;\n"
        "    icmp type destination-unreachable icmp code frag-needed drop\n"
        "  }\n"
        "}\n"
    )
    run(["ip", "netns", "exec", netns, "nft", "-f", "-"], stdin=script)


def allow_frag_needed(netns: str) -> None:
    run(["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", TABLE], check=False)


def flush_pmtu(netns: str) -> None:
    """Forget learnt path MTUs (and the rest of the route cache) in `netns`."""
    run(["ip", "netns", "exec", netns, "ip", "route", "flush", "cache"])


def tc_has(netns: str, qdisc: str, dev: str) -> str | None:
    """None when `qdisc` can be added to `dev` in `netns` (tried, then removed), else why not."""
    params = {"tbf": ["rate", "1gbit", "burst", "256kb", "latency", "50ms"], "netem": []}
    cmd = ["tc", "-n", netns, "qdisc", "add", "dev", dev, "root", qdisc, *params.get(qdisc, [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        return f"tc qdisc {qdisc}: {proc.stderr.strip() or 'failed'}"
    unshape(netns, dev)
    return None


def shape(netns: str, dev: str, rate_mbit: int, burst_kb: int = 256, latency_ms: int = 50) -> None:
    """Limit `dev`'s egress to `rate_mbit` Mbit/s with a token bucket."""
    unshape(netns, dev)
    run(
        [
            "tc", "-n", netns, "qdisc", "add", "dev", dev, "root", "tbf",
            "rate", f"{rate_mbit}mbit", "burst", f"{burst_kb}kb", "latency", f"{latency_ms}ms",
        ]
    )  # fmt: skip


def unshape(netns: str, dev: str) -> None:
    run(["tc", "-n", netns, "qdisc", "del", "dev", dev, "root"], check=False)


__all__ = [
    "LabError",
    "allow_frag_needed",
    "block_frag_needed",
    "flush_pmtu",
    "set_mtu",
    "shape",
    "tc_has",
    "unshape",
]
