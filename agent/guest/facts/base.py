"""What every fact collector shares: a fact, a root directory, bounded reads.

A fact is a dict with the wire's shape (:class:`netcheck.agent.wire.Fact`): ``name`` (dotted,
stable), ``value`` (a string, a boolean, an integer, or None: unknown), ``source`` (how it was
found: ``file:/etc/os-release``, ``command:lsinitrd``, ``proc:/proc``, ``service:systemd``,
``statvfs:/boot``, ``powershell:Get-Service``, ...) and ``detail`` (a few words, may be empty).

Every collector reads below a root directory (``/`` on a guest, a fixture tree in tests), and
every read is bounded: at most :data:`MAX_FILE` bytes of a file, :data:`MAX_ENTRIES` names of
a directory. A command runs only when the root is ``/`` (a fixture tree has none of its own).
"""

import os
import platform
from typing import Any, Dict, List, Optional, Union

Value = Union[str, bool, int, None]
Fact = Dict[str, Any]

MAX_FILE = 256 * 1024
MAX_ENTRIES = 4096
MAX_VALUE = 1024  # characters of a fact's value (the wire's limit)


def fact(name: str, value: Value, source: str, detail: str = "") -> Fact:
    if isinstance(value, str):
        value = value[:MAX_VALUE]
    return {"name": name, "value": value, "source": source[:256], "detail": detail[:512]}


class Root:
    """A guest's file system seen from `path` (``/`` for the real one)."""

    def __init__(self, path: str = "/", proc: str = "/proc", kernel: Optional[str] = None) -> None:
        self.path = os.path.abspath(path)
        self.proc = proc
        self.live = self.path == "/"
        # The running kernel's release (uname -r); a fixture tree names its own.
        self.kernel = kernel if kernel is not None else (platform.release() if self.live else "")

    def join(self, rel: str) -> str:
        return os.path.join(self.path, rel.lstrip("/"))

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.join(rel))

    def is_dir(self, rel: str) -> bool:
        return os.path.isdir(self.join(rel))

    def read(self, rel: str, limit: int = MAX_FILE) -> Optional[bytes]:
        """At most `limit` bytes of the file, or None when it cannot be read."""
        try:
            with open(self.join(rel), "rb") as f:
                return f.read(limit)
        except OSError:
            return None

    def text(self, rel: str, limit: int = MAX_FILE) -> Optional[str]:
        data = self.read(rel, limit)
        return None if data is None else data.decode("utf-8", "replace")

    def listdir(self, rel: str, limit: int = MAX_ENTRIES) -> List[str]:
        """Up to `limit` names of the directory, sorted (empty when it cannot be read)."""
        try:
            with os.scandir(self.join(rel)) as it:
                names = []
                for entry in it:
                    names.append(entry.name)
                    if len(names) >= limit:
                        break
        except OSError:
            return []
        return sorted(names)

    def first(self, *rels: str) -> Optional[str]:
        """The first of the paths that exists (as given, relative to the root)."""
        for rel in rels:
            if self.exists(rel):
                return rel
        return None


def key_values(text: str) -> Dict[str, str]:
    """``KEY=value`` lines (os-release, ifcfg): quotes removed, comments skipped."""
    out: Dict[str, str] = {}
    for line in text.splitlines()[:4096]:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def ini_sections(text: str) -> Dict[str, Dict[str, str]]:
    """``[section]`` and ``key=value`` lines (NetworkManager keyfiles, systemd .network)."""
    out: Dict[str, Dict[str, str]] = {}
    section = out.setdefault("", {})
    for line in text.splitlines()[:4096]:
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1].strip(), {})
        elif "=" in line:
            k, v = line.split("=", 1)
            section.setdefault(k.strip(), v.strip())
    return out
