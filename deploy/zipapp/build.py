"""Build the single-file agent: ``dist/netcheck-agent.pyz`` (stdlib :mod:`zipapp`).

    python3 deploy/zipapp/build.py [--out dist/netcheck-agent.pyz] [--with-serve]

The archive holds the ``agent`` package and a ``__main__`` that calls ``agent.cli.main``.
Without ``--with-serve`` it needs nothing but Python 3.11+: ``run`` (probe a plan offline,
connect probes without root) imports only the standard library. ``serve`` also needs aiohttp
and prometheus-client; ``--with-serve`` vendors them into the archive as pure Python (their
C extensions disabled, built from source), so the archive stays platform-independent.

The build prints which agent modules need packages outside the standard library, found by
reading their imports, so a new third-party import on the ``run`` path shows up here.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import zipapp
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "dist" / "netcheck-agent.pyz"
# The pure-Python builds of the serve path's dependencies: each honours one of these.
NO_EXTENSIONS = {
    "AIOHTTP_NO_EXTENSIONS": "1",
    "MULTIDICT_NO_EXTENSIONS": "1",
    "YARL_NO_EXTENSIONS": "1",
    "PROPCACHE_NO_EXTENSIONS": "1",
    "FROZENLIST_NO_EXTENSIONS": "1",
}
SERVE_REQUIREMENTS = ("aiohttp", "prometheus-client")
NO_BINARY = "aiohttp,multidict,yarl,propcache,frozenlist"
MAIN = (
    '"""netcheck-agent as one file."""\n\nfrom agent.cli import main\n\nraise SystemExit(main())\n'
)


def third_party_imports(package: Path) -> dict[str, set[str]]:
    """Top-level modules outside the stdlib and the package, imported by each module."""
    own = package.name
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
            module = ".".join(path.relative_to(package.parent).with_suffix("").parts)
            found[module] = outside
    return found


def copy_package(src: Path, dst: Path) -> None:
    shutil.copytree(
        src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.so")
    )


def vendor_serve_dependencies(target: Path) -> None:
    """pip-install the serve path's dependencies into `target` as pure Python."""
    env = {**os.environ, **NO_EXTENSIONS, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-compile",
        "--root-user-action=ignore",
        "--no-binary",
        NO_BINARY,
        "--target",
        str(target),
        *SERVE_REQUIREMENTS,
    ]
    subprocess.run(cmd, check=True, env=env)
    compiled = sorted(p.name for p in target.rglob("*.so"))
    if compiled:
        raise SystemExit(f"build: C extensions slipped into the archive: {compiled}")
    for junk in [*target.glob("*.dist-info"), *target.glob("bin")]:
        shutil.rmtree(junk)


def build(out: Path, with_serve: bool = False) -> Path:
    """Write the archive to `out` (atomically) and return its path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="netcheck-zipapp-") as tmp:
        root = Path(tmp) / "app"
        root.mkdir()
        copy_package(REPO / "agent", root / "agent")
        if with_serve:
            vendor_serve_dependencies(root)
        (root / "__main__.py").write_text(MAIN)
        partial = out.with_name(out.name + ".tmp")
        zipapp.create_archive(root, partial, interpreter="/usr/bin/env python3", compressed=True)
        partial.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="archive to write")
    parser.add_argument(
        "--with-serve",
        action="store_true",
        help="vendor aiohttp and prometheus-client (pure Python) so `serve` works too",
    )
    args = parser.parse_args(argv)
    needs = third_party_imports(REPO / "agent")
    for module, names in sorted(needs.items()):
        print(f"build: {module} imports {', '.join(sorted(names))} (not stdlib)")
    path = build(args.out, args.with_serve)
    kind = "run + serve" if args.with_serve else "run only (stdlib)"
    print(f"build: wrote {path} ({path.stat().st_size} bytes, {kind})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
