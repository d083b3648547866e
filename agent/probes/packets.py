"""Raw IPv4/TCP segments built by hand: a SYN costs microseconds, not scapy's millisecond.

Raw mode sends thousands of SYNs (16 per traced port), so building them is on the critical
path once the adaptive window is short. Replies are still parsed with scapy.
"""

from __future__ import annotations

import socket
import struct

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
