"""Run a function inside a network namespace, in a thread of this process.

``setns(2)`` changes the namespace of the calling thread only, so a short-lived thread can
talk to the lab's management network (the controller, the agents' health endpoints) while
the rest of the process stays in the host's namespace. Root only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def setns(netns: str) -> None:
    """Move the calling thread into ``/run/netns/NETNS``."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` run inside ``netns`` (None: here), its exception re-raised here."""
    if netns is None:
        return fn()
    box: dict[str, object] = {}

    def work() -> None:
        try:
            setns(netns)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=work, name=f"in-{netns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
