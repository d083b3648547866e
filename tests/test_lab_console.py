"""The demo's console output fits 120 columns: prose wraps, commands fold with a backslash
and still read back as the same command."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from deploy.lab import cli

LONG = [
    "/opt/netcheck/venv/bin/netcheck-controller",
    "report",
    "--db",
    "/var/lib/netcheck-lab/state/with a space/netcheck.db",
    "--topology",
    "/opt/netcheck/topology.yaml",
    "--inventory",
    "/var/lib/netcheck-lab/state/inventory.yaml",
    "--format",
    "table",
]


def test_a_long_command_folds_and_runs_back_as_written() -> None:
    command = shlex.join(LONG)
    assert len(command) > cli.WIDTH
    lines = cli.command_lines(command)
    assert len(lines) > 1
    assert all(len(line) <= cli.WIDTH for line in lines)
    assert all(line.endswith(" \\") for line in lines[:-1])
    # an option stays with its value
    assert not any(
        line.rstrip(" \\").endswith(("--db", "--topology", "--inventory")) for line in lines
    )
    # a real shell reads the folded lines (backslash-newlines) as the one command
    script = "set -- " + "\n".join(lines).strip() + '\nfor a in "$@"; do printf "%s\\n" "$a"; done'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == LONG


def test_a_short_command_stays_on_one_line() -> None:
    assert cli.command_lines("netcheck-controller gate --mode deployment") == [
        "  netcheck-controller gate --mode deployment"
    ]


def test_prose_wraps_under_its_indent(capsys: pytest.CaptureFixture[str]) -> None:
    cli._say("  " + "word " * 60 + "\nshort line\n" + "top " * 50)
    out = capsys.readouterr().out.splitlines()
    assert all(len(line) <= cli.WIDTH for line in out)
    assert out[0].startswith("  word") and out[1].startswith("    word")
    assert "short line" in out
    # top-level prose continues at the margin: only commands start with two spaces
    assert out[-1].startswith("top") and out[-2].startswith("top")
