"""The agent's own stand-in listeners (:class:`ListenerSet`) inside a lab namespace, on an
event loop in a thread of this process (``setns`` moves only that thread). For tests and
benchmarks that measure a path to an agent's stand-in without starting a whole agent."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from deploy.lab.enter import setns
from netcheck.agent.listeners import ConnectionCaps, ListenerSet
from netcheck.agent.wire import ListenSpec


@contextmanager
def standins(netns: str | None, address: str, ports: Sequence[int]) -> Iterator[ListenerSet]:
    """Plain-TCP stand-ins on `ports` of `address` inside `netns` (None: here), held until
    the block ends."""
    ready = threading.Event()
    box: dict[str, object] = {}
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        listeners = ListenerSet(address, None, idle_timeout=5.0, caps=ConnectionCaps())
        box["set"] = listeners
        try:
            statuses = await listeners.reconcile(ListenSpec(port=p, service="tcp") for p in ports)
            bad = [s for s in statuses if s.state != "listening"]
            if bad:
                box["error"] = RuntimeError(f"stand-ins not listening: {bad}")
                return
            ready.set()
            await stop.wait()
        finally:
            await listeners.close()
            ready.set()

    def work() -> None:
        try:
            if netns is not None:
                setns(netns)
            loop.run_until_complete(main())
        except BaseException as exc:
            box["error"] = exc
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=work, name=f"standins-{netns}", daemon=True)
    thread.start()
    ready.wait(30)
    try:
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        listeners = box["set"]
        assert isinstance(listeners, ListenerSet)
        yield listeners
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
            thread.join(30)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m deploy.lab.agentstandin ADDRESS FIRST-LAST``: hold plain-TCP stand-ins
    (measurement sessions included) until SIGTERM/SIGINT, in a process of their own."""
    import argparse
    import signal

    p = argparse.ArgumentParser(prog="python -m deploy.lab.agentstandin")
    p.add_argument("address")
    p.add_argument("ports", help="FIRST-LAST")
    args = p.parse_args(argv)
    first, _, last = str(args.ports).partition("-")
    ports = range(int(first), int(last or first) + 1)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with standins(None, str(args.address), list(ports)):
        print("ready", flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
