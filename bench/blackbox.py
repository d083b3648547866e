"""Prometheus' blackbox_exporter as a comparison: one exporter per source namespace."""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.cmd import BenchError, kill, spawn
from deploy.lab.enter import call_in

BINARY = "/usr/bin/prometheus-blackbox-exporter"
LISTEN = "127.0.0.1:9115"
MODULE = "tcp_connect"


def config(timeout_s: float) -> str:
    return (
        "modules:\n"
        f"  {MODULE}:\n"
        "    prober: tcp\n"
        f"    timeout: {timeout_s:g}s\n"
        "    tcp:\n"
        "      preferred_ip_protocol: ip4\n"
        "      ip_protocol_fallback: false\n"
    )


def _healthy(netns: str) -> bool:
    def get() -> bool:
        try:
            with urllib.request.urlopen(f"http://{LISTEN}/-/healthy", timeout=1.0) as r:
                return int(r.status) == 200
        except OSError:
            return False

    return call_in(netns, get)


@contextlib.contextmanager
def exporters(namespaces: list[str], timeout_s: float, tmp: Path) -> Iterator[str]:
    """An exporter on 127.0.0.1:9115 inside each namespace; yields its base URL there."""
    cfg = tmp / "blackbox.yml"
    cfg.write_text(config(timeout_s))
    check = subprocess.run(
        [BINARY, f"--config.file={cfg}", "--config.check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check.returncode != 0:
        raise BenchError(f"blackbox config refused: {check.stderr.strip()}")
    procs: list[subprocess.Popen[str]] = []
    try:
        for ns in namespaces:
            procs.append(
                spawn([BINARY, f"--config.file={cfg}", f"--web.listen-address={LISTEN}"], ns)
            )
        deadline = time.monotonic() + 20
        waiting = list(namespaces)
        while waiting and time.monotonic() < deadline:
            waiting = [ns for ns in waiting if not _healthy(ns)]
            time.sleep(0.1)
        if waiting:
            raise BenchError(f"blackbox_exporter not healthy in {', '.join(waiting)}")
        yield f"http://{LISTEN}"
    finally:
        for p in procs:
            kill(p)
