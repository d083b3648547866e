"""Hand-built SYN/RST segments read back by scapy with the same fields and valid checksums."""

from __future__ import annotations

import pytest

from netcheck.agent.probes.packets import tcp_segment

scapy_inet = pytest.importorskip("scapy.layers.inet")


@pytest.mark.parametrize(
    ("flags", "seq", "ttl"), [("S", 0, 64), ("S", 0xFFFFFFFF, 3), ("R", 123456789, 1)]
)
def test_segment_matches_scapy(flags: str, seq: int, ttl: int) -> None:
    IP, TCP = scapy_inet.IP, scapy_inet.TCP
    raw = tcp_segment("198.18.1.2", "198.18.3.2", 40000, 443, seq, flags, ttl)
    pkt = IP(raw)
    assert (pkt.src, pkt.dst, pkt.ttl, pkt.proto, pkt.len) == (
        "198.18.1.2",
        "198.18.3.2",
        ttl,
        6,
        40,
    )
    tcp = pkt[TCP]
    assert (tcp.sport, tcp.dport, tcp.seq, str(tcp.flags), tcp.window) == (
        40000,
        443,
        seq,
        flags,
        1024,
    )
    # scapy recomputes both checksums to the same values.
    again = IP(src=pkt.src, dst=pkt.dst, ttl=ttl, id=pkt.id) / TCP(
        sport=40000, dport=443, seq=seq, flags=flags, window=1024
    )
    rebuilt = IP(bytes(again))
    assert (rebuilt.chksum, rebuilt[TCP].chksum) == (pkt.chksum, tcp.chksum)
