"""Smaller per-connection TLS read buffers for asyncio (the agent's largest memory item).

asyncio's SSLProtocol gives every TLS connection a 256 KiB read buffer (a class attribute,
``max_size``, with no public setting). A probe round with many TLS ports, and the stand-in
listeners answering them, briefly held tens of such buffers. 32 KiB still holds two full TLS
records (16 KiB each), so reads stay whole.

Why a private attribute is patched here, and kept (measured for issue 10, Python 3.11, a
``serve`` agent holding 90 stand-in listeners and probing them all, 3 runs each): peak RSS
32.0 MiB with this shim, 48.7 MiB without (+16.7 MiB; the footprint test's bound is 40 MiB);
resident after the round 31.5 against 29.6 MiB. asyncio offers no public way to size this
buffer (``create_server``, ``open_connection`` and ``start_tls`` take none), and the only
alternative, TLS over :class:`ssl.MemoryBIO` of our own in the listeners and probes, is a
protocol implementation of its own. So: a shim that checks what it patches, does nothing on
a Python without the attribute (:func:`shrink_tls_read_buffer` says False), and a test that
a large answer still arrives whole (tests/test_agent_http.py).
"""

from __future__ import annotations

import asyncio.sslproto

READ_BUFFER = 32 * 1024


def shrink_tls_read_buffer(size: int = READ_BUFFER) -> bool:
    """Lower SSLProtocol's read buffer to `size`; False when this Python has no such knob."""
    proto = getattr(asyncio.sslproto, "SSLProtocol", None)
    current = getattr(proto, "max_size", None)
    if proto is None or not isinstance(current, int):
        return False
    if current > size:
        proto.max_size = size
    return True
