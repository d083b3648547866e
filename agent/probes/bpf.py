"""Classic BPF filters for the raw receive sockets (hand-assembled: no tcpdump needed).

Raw IPv4 sockets run the filter on the packet from its IP header.
"""

from __future__ import annotations

import socket
import struct

SO_ATTACH_FILTER = 26
_ACCEPT = 0x40000

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


def attach(sock: socket.socket, program: list[Insn]) -> None:
    import ctypes  # only where raw sockets are used: connect-only agents stay smaller

    code = b"".join(struct.pack("=HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
