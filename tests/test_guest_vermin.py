"""The guest agent stays on Python 3.6 (checked statically: this machine has only Python
3.11, no older interpreter can be installed here) and on the standard library alone."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GUEST = REPO / "agent" / "guest"
# What the archive holds besides the guest package: its two package __init__ files.
FILES = [str(GUEST), str(REPO / "netcheck" / "__init__.py"), str(REPO / "agent" / "__init__.py")]
VERMIN = shutil.which("vermin") or str(Path(sys.executable).parent / "vermin")
needs_vermin = pytest.mark.skipif(not Path(VERMIN).exists(), reason="vermin not installed (dev)")


def vermin(*paths: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VERMIN, "-t=3.6-", "--violations", "--no-tips", "--eval-annotations", *paths],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@needs_vermin
def test_the_guest_agent_needs_nothing_newer_than_python_36() -> None:
    done = vermin(*FILES)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_vermin
def test_the_test_that_drives_the_guest_is_written_for_python_36_too() -> None:
    """tests/test_guest_e2e.py builds and runs the guest archive the way a guest does; it
    keeps to what 3.6 has, annotations included, like the code it drives (and so does the
    helper it imports)."""
    done = vermin(*(str(REPO / "tests" / f) for f in ("test_guest_e2e.py", "port_helpers.py")))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_vermin
@pytest.mark.parametrize(
    "code",
    [
        "from dataclasses import dataclass\n",
        "def f(x):\n    if (y := x):\n        return y\n",
        "from __future__ import annotations\n",
        "x: list[int] = list()\nprint(x)\n",
        "import subprocess\nsubprocess.run(['true'], capture_output=True)\n",
    ],
)
def test_vermin_fails_on_what_36_lacks(tmp_path: Path, code: str) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(code)
    assert vermin(str(bad)).returncode != 0


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def test_the_guest_imports_only_the_stdlib_and_itself() -> None:
    """Not even the appliance agent (wire.py needs 3.10): only netcheck.agent's __init__."""
    bad = []
    for path in sorted(GUEST.rglob("*.py")):
        for line, name in _imports(path):
            top = name.split(".")[0]
            own = name.startswith("netcheck.agent.guest") or name == "netcheck.agent"
            if not own and (top == "netcheck" or top not in sys.stdlib_module_names):
                bad.append(f"{path.relative_to(REPO)}:{line}: {name}")
    assert bad == []


def test_make_lint_runs_vermin() -> None:
    assert (
        "vermin -t=3.6- --violations --no-tips --eval-annotations"
        in (REPO / "Makefile").read_text()
    )
    assert "vermin" in (REPO / "pyproject.toml").read_text()
