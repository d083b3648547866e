"""Expose the controller's page on the host's loopback without linking the namespaces.

``python -m deploy.lab.forward --listen 127.0.0.1:8480 --netns nclab-ctl --to 198.19.0.1:8400``
binds the listening socket in the host's namespace, then moves its only thread into the lab's
``ctl`` namespace; every accepted connection is relayed to the controller from there. No
route or link is made between the namespaces: only this process's loopback socket is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from collections.abc import Sequence

from deploy.lab.enter import setns
from netcheck.agent.inputs import host_port_arg

MAX_CONNECTIONS = 64


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def serve(sock: socket.socket, target: tuple[str, int]) -> None:
    slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def relay(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        async with slots:
            try:
                ur, uw = await asyncio.wait_for(asyncio.open_connection(*target), 5.0)
            except (OSError, TimeoutError):
                cw.close()
                return
            await asyncio.gather(_pipe(cr, uw), _pipe(ur, cw))

    server = await asyncio.start_server(relay, sock=sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.lab.forward", description=__doc__)
    p.add_argument("--listen", required=True, type=host_port_arg, help="HOST:PORT on the host")
    p.add_argument("--netns", required=True, help="namespace of the target")
    p.add_argument("--to", required=True, type=host_port_arg, help="HOST:PORT in that namespace")
    args = p.parse_args(argv)
    if not args.listen[0].startswith("127."):
        p.error("the forwarder listens on the host's loopback only (127.0.0.0/8)")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(args.listen)
    sock.listen(64)
    setns(args.netns)  # sockets made from now on live in the lab
    asyncio.run(serve(sock, args.to))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
