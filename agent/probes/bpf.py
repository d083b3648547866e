"""Classic BPF filters for the raw receive sockets (hand-assembled: no tcpdump needed).

Raw IPv4 sockets, and AF_PACKET SOCK_DGRAM sockets on incoming packets, run the filter on
the packet from its IP header.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable

SO_ATTACH_FILTER = 26
_ACCEPT = 0x40000
# Linux's ancillary load offsets (linux/filter.h): the packet's type (PACKET_HOST, ...).
_SKF_AD_PKTTYPE = (-0x1000 + 4) & 0xFFFFFFFF
PACKET_HOST = 0
# The kernel's bound on a classic BPF program (BPF_MAXINSNS).
MAX_INSNS = 4096
# Ports one :func:`syns_to_ports` program can list (two instructions each, and its head).
MAX_SYN_PORTS = (MAX_INSNS - 16) // 2

Insn = tuple[int, int, int, int]


def tcp_to_port(port: int) -> list[Insn]:
    """Accept TCP segments whose destination port is `port`."""
    return [
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf)      x = IP header length
        (0x48, 0, 0, 2),  # ldh [x+2]             TCP destination port
        (0x15, 0, 1, port),  # jeq #port
        (0x06, 0, 0, _ACCEPT),
        (0x06, 0, 0, 0),
    ]


def icmp_errors() -> list[Insn]:
    """Accept ICMP destination-unreachable (3) and time-exceeded (11)."""
    return [
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf)
        (0x50, 0, 0, 0),  # ldb [x+0]             ICMP type
        (0x15, 2, 0, 3),  # jeq #3 -> accept
        (0x15, 1, 0, 11),  # jeq #11 -> accept
        (0x06, 0, 0, 0),
        (0x06, 0, 0, _ACCEPT),
    ]


def syns_to_ports(ports: Iterable[int], snap: int = 128) -> list[Insn]:
    """Accept incoming (PACKET_HOST) IPv4 TCP SYNs without ACK, first fragments only, whose
    destination port is one of `ports` (at most :data:`MAX_SYN_PORTS`), cut to `snap` bytes
    (the IP and TCP headers are all a watcher reads). Every test jumps over a ``ret #0``
    (a jump is 8 bits wide: a long port list must not need a long jump)."""
    wanted = sorted(set(ports))
    if len(wanted) > MAX_SYN_PORTS:
        raise ValueError(f"{len(wanted)} ports, more than one filter holds ({MAX_SYN_PORTS})")
    drop = (0x06, 0, 0, 0)
    prog: list[Insn] = [
        (0x20, 0, 0, _SKF_AD_PKTTYPE),  # ld [pkttype]
        (0x15, 1, 0, PACKET_HOST),  # jeq #PACKET_HOST
        drop,
        (0x30, 0, 0, 9),  # ldb [9]               IP protocol
        (0x15, 1, 0, 6),  # jeq #TCP
        drop,
        (0x28, 0, 0, 6),  # ldh [6]               flags + fragment offset
        (0x45, 0, 1, 0x1FFF),  # jset #0x1fff      a later fragment: no TCP header
        drop,
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf)      x = IP header length
        (0x50, 0, 0, 13),  # ldb [x+13]           TCP flags
        (0x54, 0, 0, 0x12),  # and #(SYN|ACK)
        (0x15, 1, 0, 0x02),  # jeq #SYN
        drop,
        (0x48, 0, 0, 2),  # ldh [x+2]             TCP destination port
    ]
    for port in wanted:
        prog += [(0x15, 0, 1, port), (0x06, 0, 0, snap)]  # jeq #port: ret #snap
    return [*prog, drop]


def attach(sock: socket.socket, program: list[Insn]) -> None:
    import ctypes  # only where raw sockets are used: connect-only agents stay smaller

    code = b"".join(struct.pack("=HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
