"""Garbage-collector settings for the long-running server (``serve`` only).

Process-wide, so no app factory sets them: a test or a benchmark that builds an app keeps
the interpreter's defaults unless it asks. ``serve`` adds :func:`tune_gc` to the app's
``on_startup``, which aiohttp runs after every ``cleanup_ctx`` has started, so the objects
that live as long as the app (spec, inventory, the expanded checks) exist by then.
"""

from __future__ import annotations

import gc

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
