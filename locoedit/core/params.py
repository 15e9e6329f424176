"""Settings declared once: a request field carries its help, its command-line flag, how typed text is read, and how
it is checked; the CLI's options, the web app's widgets and the Python request are all built from that one place.

A request is a frozen dataclass whose fields are declared with :func:`setting`. Constructing it runs each field's
``check`` (shared validators below, named in one line with the flag that fixes it), then the request's own
``validate()`` for checks that span fields. Front ends read :func:`settings_of` and turn typed text into values with
:meth:`Setting.read`; :func:`merged_values` stacks the layers a value can come from (a config file, a model
folder's preset, the flags typed). This module imports neither torch nor diffusers, so ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locoedit.core.dtypes import DTYPE_NAMES
from locoedit.core.errors import LocoeditError
from locoedit.core.seeds import check_seeds, parse_seeds, seeds_text

Check = Callable[[str, Any], Any]  # (field name, value) -> the value, normalised; raises LocoeditError


@dataclass(frozen=True)
class Setting:
    """How one request field meets its users. ``parse`` reads the text typed on the command line or in a web box
    (default: the field's own type); ``show`` writes a value back as such text (defaults in ``--help``)."""

    help: str
    check: Check | None = None
    parse: Callable[[str], Any] | None = None
    show: Callable[[Any], str] | None = None
    choices: tuple[str, ...] = ()
    flag: str | None = None  # default: --name-with-dashes
    short: str | None = None  # e.g. "-p"
    front_end: bool = True  # False: a library-only field (no option, no widget)
    positional: bool = False  # a command-line argument rather than an option (``model`` always is)

    def read(self, value):
        """A value as a front end or a settings file gives it: text is parsed where the setting parses text."""
        if self.parse is not None and isinstance(value, str):
            return self.parse(value)
        return value


def setting(default: Any = dataclasses.MISSING, help: str = "", **how) -> Any:
    """A request field with its front-end description; ``how`` holds :class:`Setting`'s other fields."""
    return dataclasses.field(default=default, metadata={"setting": Setting(help, **how)})


# ---- settings most requests share ----

MODEL_HELP = "A hub id, a local diffusers pipeline folder, or 'toyworld'."
DEVICE_HELP = "cpu, cuda, cuda:1, ... (default: cuda if available)."


def model_setting() -> Any:
    return setting(help=MODEL_HELP)


def device_setting(help: str = DEVICE_HELP) -> Any:
    return setting(None, help)


def dtype_setting(default: str | None = "float32", help: str = "float32, float16 or bfloat16.") -> Any:
    return setting(default, help, check=one_of(*DTYPE_NAMES, optional=default is None), choices=DTYPE_NAMES)


def seeds_setting(default: tuple[int, ...], help: str, **how) -> Any:
    """Seeds, typed as ``0-3`` or ``0,5,7``."""
    how.setdefault("check", lambda name, value: check_seeds(value, name))
    return setting(default, help, parse=parse_seeds, show=seeds_text, **how)


def settings_of(request_class) -> dict[str, tuple[dataclasses.Field, Setting, Any]]:
    """Every front-end field of a request class: name -> (field, setting, type), in declaration order."""
    hints = typing.get_type_hints(request_class)
    found = {}
    for field in dataclasses.fields(request_class):
        declared = field.metadata.get("setting")
        if declared is not None and declared.front_end:
            found[field.name] = (field, declared, hints[field.name])
    return found


def flag_of(name: str, declared: Setting) -> str:
    return declared.flag or "--" + name.replace("_", "-")


def shown_default(field: dataclasses.Field, declared: Setting):
    """A field's default as a front end shows it (``show`` applied; None where the library decides later)."""
    if field.default is dataclasses.MISSING:
        return None
    return declared.show(field.default) if declared.show and field.default is not None else field.default


class Request:
    """Base of the frozen, validated requests: normalises list fields to tuples, runs every field's ``check``, then
    :meth:`validate`. Set fields through ``object.__setattr__`` (the dataclass is frozen)."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            value = _as_declared_tuple(hints[field.name], value)
            declared = field.metadata.get("setting")
            if declared is not None and declared.check is not None:
                try:
                    value = declared.check(field.name, value)
                except LocoeditError as error:  # shared validators name the default flag; say the field's own
                    raise LocoeditError(str(error).replace(_flag(field.name), flag_of(field.name, declared))) from None
            object.__setattr__(self, field.name, value)
        self.validate()

    def validate(self) -> None:
        """Checks that span several fields; subclasses override."""


def _as_declared_tuple(kind, value):
    """A list given for a tuple field as a tuple, and a lone item as a 1-tuple, unless the field also takes that item
    as it is (``layers: tuple[int, ...] | str`` keeps ``"auto"``)."""
    options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    if not any(typing.get_origin(option) is tuple for option in options):
        return value
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, (str, int, float)) and type(value) not in options:
        return (value,)
    return value


# ---- shared validators: each returns the value, or raises naming the flag that fixes it ----


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def positive(name: str, value):
    if not _number(value) or value <= 0:
        raise LocoeditError(f"{name} must be a finite number > 0, got {value!r}; pass e.g. {_flag(name)} 0.1")
    return value


def non_negative(name: str, value):
    if not _number(value) or value < 0:
        raise LocoeditError(
            f"{name} must be a finite number >= 0 (0 turns it off), got {value!r}; pass e.g. {_flag(name)} 1"
        )
    return value


def fraction(name: str, value):
    if not _number(value) or not 0 < value <= 1:
        raise LocoeditError(f"{name} {value!r} must be in (0, 1] ({_flag(name)})")
    return value


def unit_interval(name: str, value):
    if not _number(value) or not 0 <= value <= 1:
        raise LocoeditError(f"{name} must be a number in [0, 1], got {value!r} ({_flag(name)})")
    return value


def positive_int(name: str, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise LocoeditError(f"{name} must be a positive integer, got {value!r} ({_flag(name)})")
    return value


def non_negative_int(name: str, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise LocoeditError(f"{name} must be an integer >= 0, got {value!r} ({_flag(name)})")
    return value


def texts(name: str, values):
    """Every item is text with something besides whitespace."""
    if any(not isinstance(v, str) or not v.strip() for v in values):
        raise LocoeditError(f"an item of {name} is empty or not text; every {_flag(name)} needs text")
    return values


def one_of(*choices: str, optional: bool = False) -> Check:
    def check(name: str, value):
        if (value is None and optional) or value in choices:
            return value
        raise LocoeditError(f"{name} {value!r} is unknown; use one of {', '.join(choices)} ({_flag(name)})")

    return check


def all_of(*checks: Check) -> Check:
    def check(name: str, value):
        for each in checks:
            value = each(name, value)
        return value

    return check


# ---- where a value comes from: config files and model presets under the flags typed ----


def read_config(path: str | Path) -> dict[str, Any]:
    """A settings file: a JSON or TOML object of request fields (``lambda_key = 0.2``; dashes allowed)."""
    path = Path(path)
    if not path.is_file():
        raise LocoeditError(f"config file {path} does not exist; give a .json or .toml file of settings")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise LocoeditError(f"config file {path} must end in .json or .toml")
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        if isinstance(error, LocoeditError):
            raise
        raise LocoeditError(f"config file {path} is not valid {path.suffix[1:].upper()}: {error}") from None
    if not isinstance(data, dict):
        raise LocoeditError(f'config file {path} must hold an object of settings, e.g. {{"lambda_key": 0.2}}')
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def check_known(request_class, values: Mapping[str, Any], source: str) -> None:
    """Refuse a key that is no field of ``request_class``, suggesting the closest one."""
    names = [f.name for f in dataclasses.fields(request_class)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(names)}"
            raise LocoeditError(f"{source} sets {key!r}, which is no setting of this command; {hint}")


def merged_values(request_class, *layers: tuple[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The field values of ``layers`` (source name, values), later layers winning; unknown keys refused."""
    merged: dict[str, Any] = {}
    for source, values in layers:
        check_known(request_class, values, source)
        merged.update(values)
    return merged
