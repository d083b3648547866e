"""Hand-built SYN/RST segments read back by scapy with the same fields and valid checksums."""

from __future__ import annotations

import pytest

from netcheck.agent.probes.packets import read_icmp_error, read_tcp, tcp_segment

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


# Replies as they reach the scanner's raw sockets, built by scapy: the hand reader must see
# the fields scapy dissects.
def _replies() -> list[bytes]:
    IP, TCP, ICMP = scapy_inet.IP, scapy_inet.TCP, scapy_inet.ICMP
    syn = IP(src="198.18.1.2", dst="198.18.3.2", ttl=1) / TCP(sport=40000, dport=902, seq=77)
    opts = [scapy_inet.IPOption_RR(routers=["198.18.254.1"])]  # a 24-byte IP header
    return [
        bytes(
            IP(src="198.18.3.2", dst="198.18.1.2", ttl=61)
            / TCP(sport=902, dport=40000, seq=9, ack=78, flags="SA")
        ),
        bytes(
            IP(src="198.18.3.2", dst="198.18.1.2", ttl=63)
            / TCP(sport=443, dport=40000, ack=78, flags="RA")
        ),
        bytes(
            IP(src="198.18.3.2", dst="198.18.1.2", options=opts)
            / TCP(sport=22, dport=40000, seq=1, ack=2, flags="S")
        ),
        bytes(IP(src="198.18.254.1", ttl=63) / ICMP(type=11, code=0) / bytes(syn)[:28]),
        bytes(IP(src="198.18.2.1", ttl=62) / ICMP(type=3, code=13) / bytes(syn)),
        bytes(IP(src="198.18.2.1") / ICMP(type=3, code=1) / bytes(IP(options=opts) / TCP())),
    ]


def test_replies_read_by_hand_as_scapy_reads_them() -> None:
    IP, TCP, ICMP = scapy_inet.IP, scapy_inet.TCP, scapy_inet.ICMP
    IPerror, TCPerror = scapy_inet.IPerror, scapy_inet.TCPerror
    for raw in _replies():
        pkt = IP(raw)
        if pkt.haslayer(ICMP):
            err = read_icmp_error(raw)
            assert err is not None and read_tcp(raw) is None
            inner, quoted = pkt[IPerror], pkt[TCPerror]
            assert err == (
                pkt.src, pkt.ttl, pkt[ICMP].type, pkt[ICMP].code,
                inner.dst, quoted.sport, quoted.dport, quoted.seq,
            )  # fmt: skip
        else:
            tcp = read_tcp(raw)
            assert tcp is not None and read_icmp_error(raw) is None
            t = pkt[TCP]
            assert tcp == (pkt.src, pkt.ttl, t.sport, t.dport, t.seq, t.ack, int(t.flags))


def test_truncated_or_foreign_packets_are_not_replies() -> None:
    IP, UDP, ICMP = scapy_inet.IP, scapy_inet.UDP, scapy_inet.ICMP
    for raw in _replies():
        for cut in (0, 1, 19, 20, 27):
            assert read_tcp(raw[:cut]) is None and read_icmp_error(raw[:cut]) is None
    assert read_tcp(bytes(IP() / UDP())) is None
    assert read_icmp_error(bytes(IP() / ICMP(type=3) / bytes(IP() / UDP()))) is None  # not TCP
    assert read_icmp_error(bytes(IP() / ICMP(type=3) / b"\x45\x00")) is None  # quote cut short
