"""The machine the figures were measured on."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from bench import nmap


def _meminfo_gib() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "?"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def blackbox_version() -> str:
    try:
        out = subprocess.run(
            ["prometheus-blackbox-exporter", "--version"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return "not installed"
    first = (out.stdout + out.stderr).strip().splitlines()
    return first[0].split("version", 1)[-1].split("(")[0].strip() if first else "?"


def facts() -> list[tuple[str, str]]:
    import aiohttp

    return [
        ("cores", str(os.cpu_count())),
        ("cpu", _cpu_model()),
        ("memory", _meminfo_gib()),
        ("kernel", platform.release()),
        ("python", platform.python_version()),
        ("aiohttp", aiohttp.__version__),
        ("nmap", nmap.version()),
        ("blackbox_exporter", blackbox_version()),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]
