"""A process's resident memory and CPU time, from /proc/<pid>/status and /proc/<pid>/stat."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Sample:
    rss_kib: int  # VmRSS (0 once the process has exited)
    hwm_kib: int  # VmHWM: peak resident size so far
    cpu_s: float  # user + system


def parse_status(text: str) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB from a /proc/<pid>/status text."""
    vals = {"VmRSS:": 0, "VmHWM:": 0}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in vals:
            vals[parts[0]] = int(parts[1])
    return vals["VmRSS:"], vals["VmHWM:"]


def parse_cpu(stat: str) -> float:
    """utime + stime in seconds from a /proc/<pid>/stat line (the name may hold spaces)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def sample(pid: int) -> Sample:
    rss, hwm = parse_status(Path(f"/proc/{pid}/status").read_text())
    return Sample(rss, hwm, parse_cpu(Path(f"/proc/{pid}/stat").read_text()))
