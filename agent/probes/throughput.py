"""Throughput of a data path on the interaction's own ports, to the peer's stand-in.

Bulk TCP streams, one per port of a range (e.g. 6000-6010, several in parallel), each bounded
in bytes and the whole in seconds. ``up``: this agent sends, the stand-in's SINK session
counts what arrived and says so when the stream ends (the figure is what the peer really
received). ``down``: the stand-in's SOURCE session sends, this agent counts. Both directions
run over connections this agent opens, so a firewall that lets only one side connect (the
interconnect's 600x: Prem Manager -> Cloud Manager) still gets both directions measured.
Mbit/s = bits that arrived / seconds from the first stream's start to the last one's end.

Never run by default: it loads a production link. The controller asks for it (the request
channel) or the operator schedules it (topology.yaml). Blocking sockets in threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import socket
import struct
import threading
import time
from collections.abc import Sequence
from typing import Literal

from netcheck.agent import measure

Direction = Literal["up", "down"]
MAX_STREAMS = 64
MAX_SECONDS = 60.0
CHUNK = 1 << 20
_BUF = memoryview(bytes(CHUNK))


@dataclasses.dataclass(frozen=True)
class Stream:
    port: int
    nbytes: int  # bytes that arrived at the receiving end
    seconds: float
    error: str = ""


@dataclasses.dataclass(frozen=True)
class Throughput:
    address: str
    direction: Direction
    streams: tuple[Stream, ...]
    seconds: float

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.streams)

    @property
    def mbit_s(self) -> float:
        return self.nbytes * 8 / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(f"{s.port}: {s.error}" for s in self.streams if s.error)


def _connect(address: str, port: int, timeout_s: float, bind: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    try:
        if bind:
            sock.bind((bind, 0))
        sock.settimeout(timeout_s)
        sock.connect((address, port))
    except OSError:
        sock.close()
        raise
    return sock


def _abort(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _up(
    address: str, port: int, nbytes: int, end: float, start: threading.Barrier, bind: str
) -> Stream:
    try:
        sock = _connect(address, port, max(0.1, end - time.monotonic()), bind)
    except OSError as exc:
        start.abort()
        return Stream(port, 0, 0.0, f"connect: {exc}")
    try:
        sock.sendall(measure.request_line("sink"))
        start.wait(max(0.1, end - time.monotonic()))
        t0 = time.monotonic()
        left = nbytes
        while left > 0:
            now = time.monotonic()
            if now >= end:
                break
            sock.settimeout(min(1.0, end - now))
            try:
                left -= sock.send(_BUF[: min(left, CHUNK)])
            except TimeoutError:
                continue
        sock.shutdown(socket.SHUT_WR)
        # What was buffered still has to arrive: wait for the sink's count (bounded).
        sock.settimeout(max(1.0, end - time.monotonic()) + 5.0)
        reply = b""
        while not reply.endswith(b"\n") and len(reply) < 64:
            chunk = sock.recv(64)
            if not chunk:
                break
            reply += chunk
        seconds = time.monotonic() - t0
        if not reply.startswith(b"GOT ") or not reply[4:].strip().isdigit():
            return Stream(port, 0, seconds, f"no count from the stand-in ({reply[:32]!r})")
        return Stream(port, int(reply[4:].strip()), seconds)
    except (OSError, threading.BrokenBarrierError) as exc:
        return Stream(port, 0, 0.0, str(exc) or type(exc).__name__)
    finally:
        _abort(sock)


def _down(
    address: str, port: int, nbytes: int, end: float, start: threading.Barrier, bind: str
) -> Stream:
    try:
        sock = _connect(address, port, max(0.1, end - time.monotonic()), bind)
    except OSError as exc:
        start.abort()
        return Stream(port, 0, 0.0, f"connect: {exc}")
    buf = bytearray(CHUNK)
    got = 0
    try:
        start.wait(max(0.1, end - time.monotonic()))
        t0 = time.monotonic()
        sock.sendall(measure.request_line("source", nbytes))
        while got < nbytes:
            now = time.monotonic()
            if now >= end:
                break
            sock.settimeout(min(1.0, end - now))
            try:
                n = sock.recv_into(buf)
            except TimeoutError:
                continue
            if not n:
                break
            got += n
        return Stream(port, got, time.monotonic() - t0)
    except (OSError, threading.BrokenBarrierError) as exc:
        return Stream(port, got, 0.0, str(exc) or type(exc).__name__)
    finally:
        _abort(sock)


def run(
    address: str,
    ports: Sequence[int],
    direction: Direction = "up",
    bytes_per_stream: int = 256 * 2**20,
    seconds: float = 10.0,
    bind: str = "",
) -> Throughput:
    """One stream per port (at most :data:`MAX_STREAMS`), all started together, each
    stopping at `bytes_per_stream` or when `seconds` (at most :data:`MAX_SECONDS`) are up."""
    ports = list(ports)[:MAX_STREAMS]
    if not ports:
        return Throughput(address, direction, (), 0.0)
    seconds = max(0.1, min(seconds, MAX_SECONDS))
    nbytes = max(1, min(bytes_per_stream, measure.MAX_SINK_BYTES))
    end = time.monotonic() + seconds
    start = threading.Barrier(len(ports))
    work = _up if direction == "up" else _down
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(ports), "throughput") as pool:
        futures = [pool.submit(work, address, p, nbytes, end, start, bind) for p in ports]
        streams = tuple(f.result() for f in futures)
    took = max((s.seconds for s in streams), default=0.0) or (time.monotonic() - t0)
    return Throughput(address, direction, streams, took)


async def measure_throughput(
    address: str,
    ports: Sequence[int],
    direction: Direction = "up",
    bytes_per_stream: int = 256 * 2**20,
    seconds: float = 10.0,
    bind: str = "",
) -> Throughput:
    """:func:`run` in a thread."""
    return await asyncio.to_thread(run, address, ports, direction, bytes_per_stream, seconds, bind)
