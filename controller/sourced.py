"""YAML with line numbers, and errors that name the file and line.

Every input file (topology, matrix, inventory, firewall scenario) goes through
:func:`load_yaml`: it returns plain data plus a map from each key path to the line it came
from, so that validation anywhere later can say ``file:line: what is wrong``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from netcheck.controller.errors import NetcheckError

PathKey = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


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


def _walk(node: yaml.Node, path: PathKey, lines: dict[PathKey, int], file: str) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader(" ").construct_object(key_node)  # scalar keys only
            if not isinstance(key, str | int):
                raise InputError([Problem(file, key_node.start_mark.line + 1, "keys must be text")])
            if key in out:
                raise InputError(
                    [Problem(file, key_node.start_mark.line + 1, f"duplicate key {key!r}")]
                )
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _walk(value_node, (*path, key), lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(v, (*path, i), lines, file) for i, v in enumerate(node.value)]
    loader = yaml.SafeLoader("")
    return loader.construct_object(node, deep=True)


def load_yaml(path: str | Path) -> Sourced:
    """Read a YAML file; syntax errors become an :class:`InputError` with the line."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError([Problem(file, 0, f"cannot read: {exc.strerror or exc}")]) from None
    return parse_yaml(text, file)


def parse_yaml(text: str, file: str) -> Sourced:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise InputError([Problem(file, line, f"YAML syntax error: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise InputError([Problem(file, 1, f"YAML error: {exc}")]) from None
    if node is None:
        raise InputError([Problem(file, 1, "the file is empty")])
    lines: dict[PathKey, int] = {}
    try:
        data = _walk(node, (), lines, file)
    except yaml.constructor.ConstructorError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise InputError([Problem(file, line, f"YAML error: {exc.problem}")]) from None
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
