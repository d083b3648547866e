"""The installed package: one top-level `netcheck`, holding the agent and the controller."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_holds_only_netcheck_with_its_data(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    [wheel] = tmp_path.glob("netcheck-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"netcheck"}
    for needed in (
        "netcheck/agent/cli.py",
        "netcheck/agent/probes/syn.py",
        "netcheck/controller/cli.py",
        "netcheck/controller/templates/page.html.j2",
        "netcheck/controller/static/page.js",
        "netcheck/controller/render/report.schema.json",
    ):
        assert needed in names, needed
    scripts = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(scripts).decode()
    assert "netcheck-agent = netcheck.agent.cli:main" in text
    assert "netcheck-controller = netcheck.controller.cli:main" in text
