"""Smaller per-connection TLS read buffers for asyncio (the agent's largest memory item).

asyncio's SSLProtocol gives every TLS connection a 256 KiB read buffer (a class attribute,
``max_size``, with no public setting). A probe round with many TLS ports, and the stand-in
listeners answering them, briefly held tens of such buffers: +17 MiB of peak RSS for 90
ports. 32 KiB still holds two full TLS records (16 KiB each), so reads stay whole.
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
