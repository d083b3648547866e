"""Port lists written as ranges, the way firewalls and scanners read them."""

from __future__ import annotations

from collections.abc import Iterable


def port_ranges(ports: Iterable[int], sep: str = ", ") -> str:
    """``[6002, 6000, 6001, 7000]`` -> ``"6000-6002, 7000"`` (sorted, duplicates merged)."""
    spans: list[list[int]] = []
    for p in sorted(set(ports)):
        if spans and p == spans[-1][1] + 1:
            spans[-1][1] = p
        else:
            spans.append([p, p])
    return sep.join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in spans)
