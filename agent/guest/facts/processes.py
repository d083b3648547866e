"""Whether a process runs, by name: ``/proc/<pid>/comm`` of every process (bounded)."""

import os
from typing import List

MAX_PIDS = 65536


def running(proc: str, name: str) -> List[int]:
    """The pids whose command name is `name` (comm is cut at 15 characters)."""
    want = name[:15]
    found = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return []
    for entry in entries[:MAX_PIDS]:
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "comm"), "rb") as f:
                comm = f.read(64).decode("utf-8", "replace").strip()
        except OSError:
            continue
        if comm == want:
            found.append(int(entry))
    return sorted(found)
