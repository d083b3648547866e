"""Build the single-file agent: ``dist/netcheck-agent.pyz`` (stdlib :mod:`zipapp`).

    python3 deploy/zipapp/build.py [--out dist/netcheck-agent.pyz]

The archive holds the ``netcheck.agent`` package and a ``__main__`` that calls
``netcheck.agent.cli.main``. It
needs nothing but Python 3.11+: ``run`` (probe a plan offline) and ``serve`` (follow a
controller, with ``/healthz`` and ``/metrics``) import only the standard library. Two optional
extras are used when the host has them: scapy for SYN probes (raw mode, CAP_NET_RAW), and the
cryptography package to make the stand-in certificate where there is no ``openssl`` command.

The build prints which agent modules import packages outside the standard library, found by
reading their imports, so a new third-party import shows up here.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "dist" / "netcheck-agent.pyz"
MAIN = (
    '"""netcheck-agent as one file."""\n\n'
    "from netcheck.agent.cli import main\n\n"
    "raise SystemExit(main())\n"
)


def third_party_imports(package: Path) -> dict[str, set[str]]:
    """Top-level modules outside the stdlib and the package, imported by each module."""
    own = "netcheck"
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        outside = {n for n in names if n != own and n not in sys.stdlib_module_names}
        if outside:
            module = ".".join(("netcheck", *path.relative_to(package.parent).with_suffix("").parts))
            found[module] = outside
    return found


def copy_package(src: Path, dst: Path) -> None:
    shutil.copytree(
        src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.so")
    )


def build(out: Path) -> Path:
    """Write the archive to `out` (atomically) and return its path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="netcheck-zipapp-") as tmp:
        root = Path(tmp) / "app"
        root.mkdir()
        (root / "netcheck").mkdir()
        shutil.copy(REPO / "netcheck" / "__init__.py", root / "netcheck" / "__init__.py")
        copy_package(REPO / "agent", root / "netcheck" / "agent")
        (root / "__main__.py").write_text(MAIN)
        partial = out.with_name(out.name + ".tmp")
        zipapp.create_archive(root, partial, interpreter="/usr/bin/env python3", compressed=True)
        partial.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="archive to write")
    args = parser.parse_args(argv)
    needs = third_party_imports(REPO / "agent")
    for module, names in sorted(needs.items()):
        print(f"build: {module} imports {', '.join(sorted(names))} (not stdlib, optional)")
    path = build(args.out)
    print(f"build: wrote {path} ({path.stat().st_size} bytes, run + serve, stdlib only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
