"""The stand-in's measurement conversation: sink, echo and source on a plain-TCP data port.

A peer agent that qualifies a data path (path MTU, round trip, throughput) talks to the
stand-in listener of the very port the product uses. It opens with one request line:

    NETCHECK-MEASURE/1 SINK\\n          read and discard until EOF, then answer "GOT <n>\\n"
    NETCHECK-MEASURE/1 ECHO\\n          send back what arrives (small exchanges: round trips)
    NETCHECK-MEASURE/1 SOURCE <n>\\n    send <n> bytes, then close (the other direction)

Anything else on the port is the ordinary stand-in conversation (read a little, hang up).
Every session is bounded: in bytes (:data:`MAX_SINK_BYTES`, :data:`MAX_ECHO_BYTES`,
:data:`MAX_SOURCE_BYTES`) and in time (:data:`MAX_SESSION_S`, then aborted), and it counts
against the listener set's connection caps like any other conversation. Standard library only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

MAGIC = b"NETCHECK-MEASURE/1 "
# The request line is at most this long (with its newline).
HEAD_MAX = 64
# Only plain-TCP stand-ins (the data ports) speak it: the others greet with their protocol.
SERVICES = frozenset({"tcp"})
MAX_SINK_BYTES = 16 * 2**30
MAX_ECHO_BYTES = 1 * 2**20
MAX_SOURCE_BYTES = 16 * 2**30
MAX_SESSION_S = 120.0
CHUNK = 256 * 1024
_ZEROS = bytes(CHUNK)

Kind = Literal["sink", "echo", "source"]


@dataclass(frozen=True)
class Request:
    kind: Kind
    nbytes: int = 0


def request_line(kind: Kind, nbytes: int = 0) -> bytes:
    """What a client sends first."""
    tail = f" {nbytes}" if kind == "source" else ""
    return MAGIC + kind.upper().encode() + tail.encode() + b"\n"


def classify(head: bytes) -> Request | Literal["more", "no"]:
    """The request `head` opens with; "more" while it could still become one, else "no"."""
    if not head.startswith(MAGIC[: len(head)]):
        return "no"
    line, nl, _ = head.partition(b"\n")
    if not nl:
        return "more" if len(head) < HEAD_MAX else "no"
    if len(line) + 1 > HEAD_MAX or not line.startswith(MAGIC):
        return "no"
    words = line[len(MAGIC) :].split(b" ")
    if words == [b"SINK"]:
        return Request("sink")
    if words == [b"ECHO"]:
        return Request("echo")
    if len(words) == 2 and words[0] == b"SOURCE" and words[1].isdigit() and len(words[1]) <= 12:
        n = int(words[1])
        return Request("source", n) if 0 < n <= MAX_SOURCE_BYTES else "no"
    return "no"


class Session(asyncio.Protocol):
    """One measurement conversation, taking over an accepted stand-in transport."""

    def __init__(
        self,
        request: Request,
        transport: asyncio.Transport,
        live: set[asyncio.Transport],
        done: Callable[[], None],
    ) -> None:
        self.request = request
        self.transport = transport
        self.live = live
        self.done = done
        self.received = 0
        self.left = request.nbytes
        self.paused = False
        self.timer = asyncio.get_running_loop().call_later(MAX_SESSION_S, transport.abort)

    def start(self, rest: bytes) -> None:
        """Begin, with the bytes that came after the request line."""
        if self.request.kind == "source":
            self._pump()
        elif rest:
            self.data_received(rest)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.request.kind == "echo":
            if self.received > MAX_ECHO_BYTES:
                self.transport.close()
                return
            self.transport.write(data)
        elif self.request.kind == "sink" and self.received > MAX_SINK_BYTES:
            self.transport.abort()

    def eof_received(self) -> bool:
        if self.request.kind == "sink":
            self.transport.write(f"GOT {self.received}\n".encode())
        self.transport.close()
        return True

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def _pump(self) -> None:
        while self.left > 0 and not self.paused and not self.transport.is_closing():
            n = min(self.left, CHUNK)
            self.transport.write(_ZEROS if n == CHUNK else _ZEROS[:n])
            self.left -= n
        if self.left <= 0 and not self.transport.is_closing():
            self.transport.close()  # after what was written is sent

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.live.discard(self.transport)
        self.done()
