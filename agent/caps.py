"""What this process may do: effective Linux capabilities, read from /proc."""

from __future__ import annotations

import os
from pathlib import Path

CAP_NET_BIND_SERVICE = 10
CAP_NET_RAW = 13


def effective_caps(status_file: Path = Path("/proc/self/status")) -> int:
    """The CapEff bit mask of this process (0 when it cannot be read)."""
    try:
        for line in status_file.read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def has_cap(cap: int) -> bool:
    if os.name != "posix":
        return False
    return bool(effective_caps() & (1 << cap))


def can_bind_low_ports() -> bool:
    return has_cap(CAP_NET_BIND_SERVICE)


def can_use_raw_sockets() -> bool:
    return has_cap(CAP_NET_RAW)
