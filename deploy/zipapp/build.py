"""Build the single-file agent: ``dist/netcheck-agent.pyz`` (stdlib :mod:`zipapp`).

    python3 deploy/zipapp/build.py [--out dist/netcheck-agent.pyz]
    python3 deploy/zipapp/build.py --guest [--out dist/netcheck-guest.pyz]

``--guest`` builds the guest agent instead (``netcheck.agent.guest``, Python 3.6+, stdlib
only; :func:`build_guest`).

The archive holds the ``netcheck.agent`` package and a ``__main__`` that calls
``netcheck.agent.cli.main``. It
needs nothing but Python 3.11+: ``run`` (probe a plan offline), ``enrol`` (a join token for a
client certificate: the key made by the system's ``openssl``, or by the controller where there
is none) and ``serve`` (follow a controller over mutual TLS, renewing the certificate, with
``/healthz`` and ``/metrics``) import only the standard library, SYN probes included (raw
mode builds and reads its packets by hand). One optional extra is used when the host has it:
the cryptography package, to make the stand-in certificate where there is no ``openssl``.

The build reads every agent module's imports and FAILS (exit 1, naming the module, the line
and the import) on any package outside the standard library, except the optional extras of
:data:`ALLOWED_EXTRAS`, and those only inside a function (imported when used, never at module
import): a guest with only Python 3 must be able to run the archive.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "dist" / "netcheck-agent.pyz"
GUEST_OUT = REPO / "dist" / "netcheck-guest.pyz"
# The guest agent (Python 3.6+): its package, the two package __init__ files above it, and
# the Windows facts script it runs with PowerShell.
GUEST_MAIN = (
    '"""netcheck-guest as one file (Python 3.6+)."""\n\n'
    "from netcheck.agent.guest.cli import main\n\n"
    "raise SystemExit(main())\n"
)
FACTS_PS1 = REPO / "deploy" / "guest" / "facts.ps1"
MAIN = (
    '"""netcheck-agent as one file."""\n\n'
    "from netcheck.agent.cli import main\n\n"
    "raise SystemExit(main())\n"
)


# Optional extras: (module or package prefix, top-level import) -> why it may be imported.
ALLOWED_EXTRAS: dict[tuple[str, str], str] = {
    ("netcheck.agent.certs", "cryptography"): "the stand-in certificate without openssl",
}


@dataclasses.dataclass(frozen=True)
class ThirdParty:
    """One import of a package outside the standard library."""

    module: str  # the agent module, dotted
    path: Path
    line: int
    name: str  # the top-level package imported
    lazy: bool  # inside a function


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("netcheck", *parts))


def _imports(tree: ast.AST) -> list[tuple[int, str, bool]]:
    """(line, top-level name, inside a function) of every absolute import."""
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name.split(".")[0], lazy) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0], lazy))
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def third_party(package: Path) -> list[ThirdParty]:
    """Every import of a package outside the stdlib and netcheck, in every module."""
    out = []
    for path in sorted(package.rglob("*.py")):
        module = _module_name(path, package)
        for line, name, lazy in _imports(ast.parse(path.read_text(), str(path))):
            if name != "netcheck" and name not in sys.stdlib_module_names:
                out.append(ThirdParty(module, path, line, name, lazy))
    return out


def _allowed(imp: ThirdParty) -> bool:
    return imp.lazy and any(
        name == imp.name and (imp.module == prefix or imp.module.startswith(prefix + "."))
        for prefix, name in ALLOWED_EXTRAS
    )


def forbidden_imports(package: Path) -> list[str]:
    """One line per import that the archive must not have (empty: the build may go on)."""
    problems = []
    for imp in third_party(package):
        if _allowed(imp):
            continue
        where = imp.path.relative_to(REPO) if imp.path.is_relative_to(REPO) else imp.path
        if any(name == imp.name for _, name in ALLOWED_EXTRAS) and not imp.lazy:
            why = "an optional extra, but imported at module level (import it in a function)"
        else:
            why = "not in the standard library (allowed extras: deploy/zipapp/build.py)"
        problems.append(f"{where}:{imp.line}: {imp.module} imports {imp.name}: {why}")
    return problems


def third_party_imports(package: Path) -> dict[str, set[str]]:
    """Top-level modules outside the stdlib and the package, imported by each module."""
    found: dict[str, set[str]] = {}
    for imp in third_party(package):
        found.setdefault(imp.module, set()).add(imp.name)
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


def build_guest(out: Path) -> Path:
    """Write the guest agent's archive (``netcheck-guest.pyz``) to `out`, atomically: only
    ``netcheck/__init__.py``, ``netcheck/agent/__init__.py``, ``netcheck/agent/guest/`` and
    ``facts.ps1`` beside it; nothing of the appliance agent (Python 3.11)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="netcheck-guest-zipapp-") as tmp:
        root = Path(tmp) / "app"
        (root / "netcheck" / "agent").mkdir(parents=True)
        shutil.copy(REPO / "netcheck" / "__init__.py", root / "netcheck" / "__init__.py")
        shutil.copy(REPO / "agent" / "__init__.py", root / "netcheck" / "agent" / "__init__.py")
        copy_package(REPO / "agent" / "guest", root / "netcheck" / "agent" / "guest")
        shutil.copy(FACTS_PS1, root / "netcheck" / "agent" / "guest" / "facts.ps1")
        (root / "__main__.py").write_text(GUEST_MAIN)
        partial = out.with_name(out.name + ".tmp")
        zipapp.create_archive(root, partial, interpreter="/usr/bin/env python3", compressed=True)
        partial.replace(out)
    return out


def main(argv: list[str] | None = None, package: Path = REPO / "agent") -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="archive to write")
    parser.add_argument(
        "--guest", action="store_true", help="the guest agent (Python 3.6+): netcheck-guest.pyz"
    )
    args = parser.parse_args(argv)
    if args.guest:
        problems = forbidden_imports(package / "guest")
        for line in problems:
            print(f"build: {line}", file=sys.stderr)
        if problems:
            return 1
        path = build_guest(args.out or GUEST_OUT)
        print(f"build: wrote {path} ({path.stat().st_size} bytes, the guest agent, Python 3.6+)")
        return 0
    args.out = args.out or DEFAULT_OUT
    problems = forbidden_imports(package)
    if problems:
        for line in problems:
            print(f"build: {line}", file=sys.stderr)
        print("build: FAILED: the agent must run on the standard library alone", file=sys.stderr)
        return 1
    for module, names in sorted(third_party_imports(package).items()):
        print(f"build: {module} imports {', '.join(sorted(names))} lazily (optional extra)")
    path = build(args.out)
    print(f"build: wrote {path} ({path.stat().st_size} bytes, run + enrol + serve, stdlib only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
