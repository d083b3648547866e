"""Raw IPv4/TCP segments built and read by hand, with :mod:`struct`.

Building: raw mode sends thousands of SYNs (16 per traced port), so building them is on the
critical path once the adaptive window is short (a SYN costs microseconds, scapy's about a
millisecond). Reading: the replies (TCP from the probed port, ICMP errors quoting our SYN)
need a handful of header fields; importing scapy to dissect them cost 32 MiB of the agent's
40 MiB budget. The tests read every packet built here with scapy, and compare this module's
reading of real and crafted replies with scapy's.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

FLAGS = {"S": 0x02, "R": 0x04, "A": 0x10}
_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_segment(
    src: str, dst: str, sport: int, dport: int, seq: int, flags: str, ttl: int = 64
) -> bytes:
    """An IPv4 packet holding a bare TCP segment (no options, window 1024)."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    bits = sum(FLAGS[f] for f in flags)
    tcp = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, 0, 5 << 4, bits, 1024, 0, 0)
    pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = _IP.pack(0x45, 0, 20 + len(tcp), 1, 0, ttl, socket.IPPROTO_TCP, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + tcp


class TcpReply(NamedTuple):
    """What the scanner needs of a TCP segment that reached us."""

    src: str
    ttl: int
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int


class IcmpError(NamedTuple):
    """An ICMP error quoting one of our TCP segments (RFC 792: its IP header + 8 bytes)."""

    src: str  # the router (or host) that sent the error
    ttl: int
    type: int
    code: int
    inner_dst: str  # where our segment was going
    inner_sport: int
    inner_dport: int
    inner_seq: int


def _ip_header(data: bytes, proto: int) -> tuple[int, str, int] | None:
    """(header length, source, TTL) of an IPv4 packet carrying `proto`, None otherwise."""
    if len(data) < 20 or data[0] >> 4 != 4 or data[9] != proto:
        return None
    ihl = (data[0] & 0x0F) * 4
    if ihl < 20 or len(data) < ihl:
        return None
    return ihl, socket.inet_ntoa(data[12:16]), data[8]


def read_tcp(data: bytes) -> TcpReply | None:
    """The TCP reply in the IPv4 packet `data` (as a raw socket hands it over), or None."""
    head = _ip_header(data, socket.IPPROTO_TCP)
    if head is None:
        return None
    ihl, src, ttl = head
    if len(data) < ihl + 14:
        return None
    sport, dport, seq, ack, _offset, flags = struct.unpack_from("!HHIIBB", data, ihl)
    return TcpReply(src, ttl, sport, dport, seq, ack, flags)


def read_icmp_error(data: bytes) -> IcmpError | None:
    """The ICMP error in `data` if it quotes a TCP segment, or None."""
    head = _ip_header(data, socket.IPPROTO_ICMP)
    if head is None:
        return None
    ihl, src, ttl = head
    if len(data) < ihl + 8:
        return None
    icmp_type, code = data[ihl], data[ihl + 1]
    inner = data[ihl + 8 :]
    quoted = _ip_header(inner, socket.IPPROTO_TCP)
    if quoted is None:
        return None
    inner_ihl = quoted[0]
    if len(inner) < inner_ihl + 8:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", inner, inner_ihl)
    dst = socket.inet_ntoa(inner[16:20])
    return IcmpError(src, ttl, icmp_type, code, dst, sport, dport, seq)
