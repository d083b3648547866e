"""Interpreter settings for the long-running server (``serve`` only): the garbage collector
and the thread switch interval.

Process-wide, so no app factory sets them: a test or a benchmark that builds an app keeps
the interpreter's defaults unless it asks. ``serve`` adds :func:`tune_gc` to the app's
``on_startup``, which aiohttp runs after every ``cleanup_ctx`` has started, so the objects
that live as long as the app (spec, inventory, the expanded checks) exist by then.
"""

from __future__ import annotations

import gc
import sys

from aiohttp import web

# A batch allocates hundreds of objects that die with its request (each result's object and
# fields): at the default threshold (700) the young generation was collected about once per
# batch (py-spy: 5 % of the samples under a burst of 1,000 agents). Every GC_THRESHOLD
# allocations instead.
GC_THRESHOLD = 50_000


async def tune_gc(_app: web.Application) -> None:
    """Freeze what exists now (out of every later collection), then raise the threshold."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


# The event loop (agents' posts, readers) and the store's writer share the interpreter lock
# with the evaluation thread, which computes and renders a big site's evaluation for seconds.
# A thread that gave the lock up (every socket read or write, every SQLite statement) gets it
# back only once the holder is asked to let go, after the switch interval: at the default
# 5 ms, a post's few hand-overs cost tens of milliseconds, and while the evaluation ran, posts
# spread over 5 s from 1,000 agents took p50 1.7 s (bench, mutual TLS). At 0.5 ms: p50 40 ms,
# p99 58-173 ms; at 0.1 ms: p99 14 ms, with the same ingest rate (python -m bench --only
# ingest, back to back).
SWITCH_INTERVAL_S = 0.0001


async def tune_switching(_app: web.Application) -> None:
    """Ask the thread holding the interpreter lock to let go after SWITCH_INTERVAL_S."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
