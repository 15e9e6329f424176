"""Typed JSON formats: every file locoedit writes carries ``"format": "locoedit.NAME/VERSION"`` and is read back
by one typed reader, the ``from_json`` of its dataclass.

A :class:`JsonRecord` is a dataclass whose fields are JSON values, tuples, lists, dicts, optional values or other
dataclasses; :func:`to_plain` and :func:`from_plain` convert by the field annotations. Reading refuses another
format or a newer version of this one in one line. A file with no ``format`` key was written by locoedit 0.1,
before formats were versioned, and is read as version 1.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

from locoedit import __version__
from locoedit.core.errors import LocoeditError
from locoedit.core.io import write_json

R = TypeVar("R", bound="JsonRecord")


def to_plain(value):
    """Dataclasses to dicts (fields marked ``metadata={"json": False}`` left out), tuples to lists, recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.metadata.get("json", True)
        }
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    return value


def _wrong(where: str, expected: str, value) -> LocoeditError:
    return LocoeditError(f"{where} should be {expected}, got {type(value).__name__} {value!r:.60}")


def from_plain(kind, value, where: str):
    """``value`` (parsed JSON) as an instance of the annotation ``kind``; errors name the field's path."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any or kind is object:
        return value
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return from_plain(option, value, where)
            except LocoeditError:
                continue
        return from_plain(options[-1], value, where)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise _wrong(where, "an object", value)
        hints = typing.get_type_hints(kind)
        given = {}
        for f in dataclasses.fields(kind):
            if not f.init or not f.metadata.get("json", True):
                continue
            if f.name in value:
                given[f.name] = from_plain(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise LocoeditError(f"{where} lacks the field {f.name!r}")
        return typing.cast(type, kind)(**given)  # a dataclass type: annotations are types, not instances
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _wrong(where, "a list", value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise _wrong(where, f"a list of {len(args)} items", value)
            return tuple(from_plain(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        items = [from_plain(args[0] if args else Any, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(where, "an object", value)
        return {k: from_plain(args[1] if args else Any, v, f"{where}.{k}") for k, v in value.items()}
    if kind in (dict, list):
        if not isinstance(value, kind):
            raise _wrong(where, "an object" if kind is dict else "a list", value)
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(where, "a number", value)
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(where, "an integer", value)
        return value
    if kind in (str, bool):
        if not isinstance(value, kind):
            raise _wrong(where, "text" if kind is str else "true or false", value)
        return value
    raise TypeError(f"{where}: annotation {kind!r} has no JSON form")


def check_format(data, expected: str, source: str) -> None:
    """Refuse ``data`` unless it is a JSON object of format ``expected`` (same name, version not newer)."""
    if not isinstance(data, dict):
        raise LocoeditError(f"{source} is not a {expected} file: it holds no JSON object")
    found = data.get("format")
    if found is None:
        return  # written by locoedit 0.1, before formats were versioned: the same fields as version 1
    name, _, version = str(found).rpartition("/")
    expected_name, _, expected_version = expected.rpartition("/")
    if name != expected_name:
        raise LocoeditError(f"{source} holds a {found!r} file, not {expected!r}; give the file locoedit wrote for that")
    if not version.isdigit() or int(version) > int(expected_version):
        raise LocoeditError(
            f"{source} is in format {found}, newer than this locoedit ({__version__}) reads ({expected}); "
            "upgrade locoedit to read it"
        )


class JsonRecord:
    """A dataclass written as a JSON file with a ``format`` key; subclasses set :attr:`FORMAT`."""

    FORMAT: ClassVar[str]

    def to_json(self) -> dict:
        return {"format": self.FORMAT, **to_plain(self)}

    @classmethod
    def from_json(cls: type[R], data, source: str | None = None) -> R:
        source = source or f"the {cls.FORMAT} data"
        check_format(data, cls.FORMAT, source)
        try:
            return from_plain(cls, {k: v for k, v in data.items() if k != "format"}, cls.__name__)
        except LocoeditError as error:
            raise LocoeditError(f"{source} is damaged: {error}") from None

    @classmethod
    def read(cls: type[R], path: str | Path) -> R:
        path = Path(path)
        if not path.is_file():
            raise LocoeditError(f"{path} does not exist; give a {cls.FORMAT} file written by locoedit")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LocoeditError(f"{path} is not valid JSON ({error}); it is damaged or not a locoedit file") from None
        return cls.from_json(data, str(path))

    def write(self, path: str | Path) -> Path:
        return write_json(path, self.to_json())
