"""The physical floor: every port connected at once, one SYN each, the same timeout.

Two references: plain asyncio (the event loop netcheck's agent also pays for) and a bare
``selectors`` loop of non-blocking sockets (what the machine can do at all from Python).
Each returns the state per port: ``open``, ``refused``, ``filtered`` (no answer) or ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import selectors
import socket
import time
from collections.abc import Sequence

Target = tuple[str, int]


async def asyncio_floor(targets: Sequence[Target], timeout_s: float) -> list[str]:
    loop = asyncio.get_running_loop()

    async def one(addr: str, port: int) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (addr, port)), timeout_s)
            return "open"
        except TimeoutError:
            return "filtered"
        except ConnectionRefusedError:
            return "refused"
        except OSError:
            return "error"
        finally:
            sock.close()

    return list(await asyncio.gather(*(one(a, p) for a, p in targets)))


def selectors_floor(targets: Sequence[Target], timeout_s: float) -> list[str]:
    states = ["filtered"] * len(targets)
    sel = selectors.DefaultSelector()
    socks: dict[int, socket.socket] = {}
    try:
        for i, (addr, port) in enumerate(targets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            socks[i] = sock
            rc = sock.connect_ex((addr, port))
            if rc in (0,):
                states[i] = "open"
            elif rc in (errno.EINPROGRESS, errno.EAGAIN):
                sel.register(sock, selectors.EVENT_WRITE, i)
            else:
                states[i] = "refused" if rc == errno.ECONNREFUSED else "error"
        deadline = time.monotonic() + timeout_s
        while sel.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                i = int(key.data)
                err = socks[i].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                states[i] = (
                    "open" if err == 0 else ("refused" if err == errno.ECONNREFUSED else "error")
                )
                sel.unregister(socks[i])
    finally:
        sel.close()
        for sock in socks.values():
            with contextlib.suppress(OSError):
                sock.close()
    return states
