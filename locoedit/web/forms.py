"""Gradio widgets built from a request's declared settings (:mod:`locoedit.core.params`), as the CLI builds its
options: a text box per text or list setting (one item per line), a number box per number, a dropdown per setting
with choices, a checkbox per flag. A widget left empty (or at "the default") is not given, so the request's default,
the model's preset, or the library's own choice applies, exactly as for an option not typed on the command line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import gradio as gr

from locoedit.core.errors import LocoeditError
from locoedit.core.params import settings_of, shown_default

DEFAULT_CHOICE = "(default)"  # a dropdown's entry for "not given"
SKIPPED = ("model",)  # the page's model box serves every tab


def widget_id(prefix: str, name: str) -> str:
    return f"{prefix}-{name.replace('_', '-')}"


def _optional(kind) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)


def _number(kind) -> bool:
    options = typing.get_args(kind) if _optional(kind) else (kind,)
    return any(option in (int, float) for option in options) and not any(option is str for option in options)


def _is_list(kind) -> bool:
    options = typing.get_args(kind) if _optional(kind) else (kind,)
    return any(typing.get_origin(option) is tuple for option in options)


def setting_widget(prefix: str, name: str, field: dataclasses.Field, declared, kind) -> Any:
    """The widget of one setting, labelled and explained by its declaration."""
    label, elem_id = name.replace("_", " ").capitalize(), widget_id(prefix, name)
    default = shown_default(field, declared)
    if declared.choices:
        choices = list(declared.choices) if field.default in declared.choices else [DEFAULT_CHOICE, *declared.choices]
        value = default if default in declared.choices else DEFAULT_CHOICE
        return gr.Dropdown(choices, value=value, label=label, info=declared.help, elem_id=elem_id)
    if kind is bool:
        return gr.Checkbox(bool(default), label=label, info=declared.help, elem_id=elem_id)
    if _number(kind) and declared.parse is None and default is not None:
        return gr.Number(default, label=label, info=declared.help, elem_id=elem_id)
    # Text for the rest, optional numbers included: an empty box is "not given" (a browser's number box sends 0).
    shown = _shown(default)
    lines = 2 if _is_list(kind) and declared.parse is None else 1
    return gr.Textbox(shown, label=label, info=declared.help, lines=lines, elem_id=elem_id)


def _number_typed(name: str, kind, text: str) -> int | float:
    """A number typed in a text box, as the setting's type (an integer setting refuses 2.5 in its own check)."""
    options = typing.get_args(kind) if _optional(kind) else (kind,)
    try:
        return int(text) if int in options else float(text)
    except ValueError:
        raise LocoeditError(
            f"{name} {text!r} is not a {'whole ' if int in options else ''}number; type one, or leave the box empty "
            "for the default"
        ) from None


def _shown(default) -> str:
    """A default as its text box shows it."""
    return "\n".join(default) if isinstance(default, tuple) else ("" if default is None else str(default))


def form_settings(request_class, skip: Iterable[str] = ()) -> list[str]:
    """The settings of ``request_class`` a form shows, in declaration order."""
    return [name for name in settings_of(request_class) if name not in SKIPPED and name not in set(skip)]


def build_form(request_class, prefix: str, names: Iterable[str]) -> dict[str, Any]:
    """Widgets (created in the current Gradio layout) for ``names`` of ``request_class``'s settings."""
    declared = settings_of(request_class)
    return {name: setting_widget(prefix, name, *declared[name]) for name in names}


def given_values(request_class, names: list[str], values: Sequence[Any]) -> dict[str, Any]:
    """What the widgets of ``names`` hold, as request values; empty boxes and "(default)" are left out."""
    declared = settings_of(request_class)
    given: dict[str, Any] = {}
    for name, value in zip(names, values):
        field, setting, kind = declared[name]
        default = shown_default(field, setting)
        if value is None or value in (DEFAULT_CHOICE, default, _shown(default)):
            continue  # left as the form showed it: not given, as an option not typed
        if isinstance(value, str):
            if _is_list(kind) and setting.parse is None:
                value = tuple(line.strip() for line in value.splitlines() if line.strip())
                if not value and field.default == ():
                    continue
            else:
                value = value.strip()
                if not value and field.default in (None, "", ()):
                    continue
                value = (
                    _number_typed(name, kind, value) if _number(kind) and setting.parse is None else setting.read(value)
                )
        elif isinstance(value, float) and (kind is int or (_optional(kind) and int in typing.get_args(kind))):
            value = int(value) if value.is_integer() else value  # a number box gives floats; checks refuse 2.5
        given[name] = value
    return given
