"""YAML with line numbers, and errors that name the file and line.

Every input file (topology, matrix, inventory, firewall scenario) goes through
:func:`load_yaml`: it returns plain data plus a map from each key path to the line it came
from, so that validation anywhere later can say ``file:line: what is wrong``.

The files are untrusted input, so loading is bounded before anything is built, the way
Kubernetes' YAML loader caps alias expansion: a file of at most :data:`MAX_FILE_BYTES`,
UTF-8; then one streaming pass over the parser's events (no tree yet) that refuses nesting
deeper than :data:`MAX_DEPTH`, a scalar longer than :data:`MAX_SCALAR_CHARS`, and a document
that would expand to more than :data:`MAX_NODES` nodes once every alias is replaced by what
it names (each anchor's expanded size is known when it closes, so a billion-laughs bomb is
refused at the alias that crosses the bound, without expanding anything). Only then is the
tree composed and walked, and the walk visits at most :data:`MAX_NODES` nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    ScalarEvent,
)

from netcheck.controller.errors import NetcheckError

PathKey = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

# Bounds on every YAML input. The largest file the project makes is a 1,014-host inventory
# (bench/ingest.py, 1,000 agents): about 60 KB and 9,300 nodes; topology.yaml is 20 KB and
# 1,100 nodes. A 10,000-host inventory (inventory.MAX_HOSTS) is about 90,000 nodes.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 32  # collections inside collections; topology.yaml needs 5
MAX_SCALAR_CHARS = 4096  # one value (a key, a name, a text); Python's int parsing stops at 4,300
MAX_NODES = 200_000  # after alias expansion: 1.3 s and 150 MB to load here; refused at once

# libyaml's parser when present (about 10 x faster); the pure-Python one otherwise.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:  # line 0: the whole file (it could not be read)
        return (
            f"{self.file}:{self.line}: {self.message}"
            if self.line
            else f"{self.file}: {self.message}"
        )


class InputError(NetcheckError):
    """One or more problems in an input file; ``str()`` gives one ``file:line: ...`` per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(sorted(problems, key=lambda p: (p.file, p.line)))
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Sourced:
    """Data loaded from a YAML file, with the line of every key path."""

    file: str
    data: Any
    lines: dict[PathKey, int]

    def line(self, path: PathKey) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return 1

    def problem(self, path: PathKey, message: str) -> Problem:
        return Problem(self.file, self.line(path), message)


class _Mark(Protocol):  # yaml.Mark, or libyaml's own Mark
    line: int


def _line(mark: _Mark | None) -> int:
    return mark.line + 1 if mark is not None else 1


def _refuse(file: str, mark: _Mark | None, message: str) -> InputError:
    return InputError([Problem(file, _line(mark), message)])


def check_bounds(text: str, file: str) -> int:
    """Refuse ``text`` if it nests too deep, has a huge scalar or expands to too many nodes.

    Returns the number of nodes the document expands to (every alias replaced).

    One pass over the parser's events, in memory proportional to the depth and the number
    of anchors: each open collection counts its nodes, an anchor's expanded size is kept
    when its node ends, and an alias adds the size of what it names.
    """
    sizes: dict[str, int] = {}  # anchor -> expanded nodes of the node it names
    opened: list[tuple[str | None, int]] = []  # open collections: (anchor, total before it)
    total = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, DocumentStartEvent):
            sizes.clear()  # anchors are per document
        elif isinstance(event, CollectionStartEvent):
            if len(opened) >= MAX_DEPTH:
                raise _refuse(file, event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
            opened.append((event.anchor, total))
            total += 1
        elif isinstance(event, CollectionEndEvent):
            anchor, before = opened.pop()
            if anchor is not None:
                sizes[anchor] = total - before
        elif isinstance(event, ScalarEvent):
            if len(event.value) > MAX_SCALAR_CHARS:
                raise _refuse(
                    file,
                    event.start_mark,
                    f"a value of {len(event.value):,} characters; the limit is "
                    f"{MAX_SCALAR_CHARS:,}",
                )
            if event.anchor is not None:
                sizes[event.anchor] = 1
            total += 1
        elif isinstance(event, AliasEvent):
            size = sizes.get(event.anchor or "")
            if size is None:
                inside = any(a == event.anchor for a, _ in opened)
                raise _refuse(
                    file,
                    event.start_mark,
                    f"alias *{event.anchor} "
                    + ("refers to a node that contains it" if inside else "names no anchor"),
                )
            total += size
        if total > MAX_NODES:
            raise _refuse(
                file,
                event.start_mark,
                f"the document expands to more than {MAX_NODES:,} nodes"
                + (f" (at alias *{event.anchor})" if isinstance(event, AliasEvent) else ""),
            )
    return total


def _walk(
    node: yaml.Node, path: PathKey, lines: dict[PathKey, int], file: str, loader: yaml.SafeLoader
) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = _scalar(key_node, loader, file) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str | int):
                raise InputError([Problem(file, line, "keys must be text")])
            if key in out:
                raise InputError([Problem(file, line, f"duplicate key {key!r}")])
            lines[(*path, key)] = line
            out[key] = _walk(value_node, (*path, key), lines, file, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(v, (*path, i), lines, file, loader) for i, v in enumerate(node.value)]
    return _scalar(node, loader, file)


def _scalar(node: yaml.Node, loader: yaml.SafeLoader, file: str) -> Any:
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, OverflowError) as exc:  # e.g. a date 2024-13-01
        raise _refuse(file, node.start_mark, f"{node.value!r:.60}: {exc}") from None


def load_yaml(path: str | Path) -> Sourced:
    """Read a YAML file; syntax errors and exceeded bounds become an :class:`InputError`."""
    file = str(path)
    try:
        with Path(path).open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise InputError([Problem(file, 0, f"cannot read: {exc.strerror or exc}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise InputError(
            [Problem(file, 0, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB, the limit")]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InputError([Problem(file, line, "not UTF-8 text")]) from None
    return parse_yaml(text, file)


def parse_yaml(text: str, file: str) -> Sourced:
    if len(text) > MAX_FILE_BYTES:
        raise InputError([Problem(file, 0, f"longer than {MAX_FILE_BYTES:,} characters")])
    try:
        check_bounds(text, file)
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise InputError(
            [Problem(file, _line(mark), f"YAML syntax error: {exc.problem}")]
        ) from None
    except yaml.YAMLError as exc:
        raise InputError([Problem(file, 1, f"YAML error: {exc}")]) from None
    if node is None:
        raise InputError([Problem(file, 1, "the file is empty")])
    lines: dict[PathKey, int] = {}
    try:
        data = _walk(node, (), lines, file, yaml.SafeLoader(""))
    except yaml.constructor.ConstructorError as exc:
        raise InputError(
            [Problem(file, _line(exc.problem_mark), f"YAML error: {exc.problem}")]
        ) from None
    return Sourced(file, data, lines)


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    return "nothing" if value is None else f"{type(value).__name__} {value!r:.40}"


def _describe(loc: PathKey) -> str:
    return ".".join(str(p) for p in loc) or "the document"


def validation_problems(src: Sourced, exc: ValidationError, base: PathKey = ()) -> list[Problem]:
    """Translate pydantic's errors into ``file:line`` problems in plain words."""
    out = []
    for err in exc.errors():
        loc: PathKey = (*base, *(p for p in err["loc"] if isinstance(p, str | int)))
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r} in {_describe(loc[:-1])}"
        elif kind == "missing":
            msg = f"missing key {loc[-1]!r} in {_describe(loc[:-1])}"
        elif kind in ("model_type", "dict_type"):
            msg = f"{_describe(loc)}: should be a mapping (key: value), not {_kind(err['input'])}"
        else:
            text = str(err["msg"]).removeprefix("Value error, ")
            msg = f"{_describe(loc)}: {text}"
        out.append(src.problem(loc, msg))
    return out


def validate(src: Sourced, model: type[M], data: Any = None, base: PathKey = ()) -> M:
    """Validate ``data`` (default: the whole file) against ``model``, or raise InputError."""
    try:
        return model.model_validate(src.data if data is None else data)
    except ValidationError as exc:
        raise InputError(validation_problems(src, exc, base)) from None


def raise_if(problems: Iterable[Problem]) -> None:
    found = list(problems)
    if found:
        raise InputError(found)
