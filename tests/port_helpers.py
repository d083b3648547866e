"""Free TCP ports on a loopback address, for the tests' own listeners.

Written for Python 3.6 (string annotations), since tests/test_guest_e2e.py uses it too.
"""

import socket


def free_port(addr: str = "127.0.0.1") -> int:
    """A port nothing listens on at `addr` now (the next call may give the same one)."""
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def free_ports(n: int, addr: str = "127.0.0.1") -> "list[int]":
    """`n` distinct free ports at `addr`: their sockets are held until all are chosen."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((addr, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()
