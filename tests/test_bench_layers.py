"""The benchmarks use the lab's API and the controller's read APIs, never their own copies."""

from __future__ import annotations

import re
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(BENCH.glob("*.py"))}


def test_no_sql_of_their_own() -> None:
    """Results come through the store's Python API or the HTTP API, not the schema."""
    found = {
        name: m.group(0)
        for name, text in _sources().items()
        if (m := re.search(r"\bsqlite3\b|\bSELECT\b|\bFROM\s+(results|agents|listeners)\b", text))
    }
    assert found == {}


def test_lab_processes_are_started_through_deploy_lab() -> None:
    """No benchmark spells the lab's command lines itself (deploy/lab/argv.py does)."""
    spelled = {
        name
        for name, text in _sources().items()
        for module in ("deploy.lab.standin", 'netcheck.agent", "serve', "netcheck.controller")
        if f'"{module}"' in text or f"'{module}'" in text
    }
    assert spelled == set()
    assert not (BENCH / "lab.py").exists() and not (BENCH / "controller_proc.py").exists()
