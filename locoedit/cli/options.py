"""Commands built from a request's declared settings (:mod:`locoedit.core.params`): one option per setting, with its
help, default and flag, plus ``--config``; what was typed is read as the setting reads it, stacked over the config
file and the model's presets (:func:`locoedit.models.names.request_for`), and the request is built and checked.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from locoedit.cli.errors import user_errors
from locoedit.core.params import flag_of, settings_of, shown_default
from locoedit.models.names import request_for

CONFIG = "config"
TYPED = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")  # parameter sources of a value the user gave (by name: typer
# may bring its own copy of click's ParameterSource)
CONFIG_HELP = (
    "JSON or TOML file of this command's settings (flags typed win over it; it wins over the model's presets)."
)


def _option_type(kind, parses: bool):
    """The type typer parses an option as: text for settings that parse their own text, a repeatable list for tuples,
    else the field's own type."""
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
    if parses:
        return str | None
    if typing.get_origin(kind) is tuple or (optional and typing.get_origin(typing.get_args(kind)[0]) is tuple):
        return list[str] | None
    return kind


def option_parameters(request_class) -> list[inspect.Parameter]:
    """One keyword parameter per front-end setting of ``request_class``; ``model`` is the positional argument."""
    parameters = []
    default: Any  # inspect.Parameter.empty or the shown default
    for name, (field, declared, kind) in settings_of(request_class).items():
        if name == "model" or declared.positional:
            info: Any = typer.Argument(help=declared.help)
            annotation, default = str, inspect.Parameter.empty
        else:
            help_text = declared.help + (f" One of: {', '.join(declared.choices)}." if declared.choices else "")
            decls = [flag_of(name, declared)] + ([declared.short] if declared.short else [])
            if kind is bool:
                decls = [f"{decls[0]}/--no-{decls[0][2:]}"]
            info = typer.Option(*decls, help=help_text)
            annotation = _option_type(kind, declared.parse is not None)
            default = shown_default(field, declared) if annotation is not list[str] | None else None
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[annotation, info]
            )
        )
    return parameters


def given_values(ctx: typer.Context, request_class, values: dict[str, Any]) -> dict[str, Any]:
    """The settings typed on the command line (not those left at their shown defaults)."""
    fields = settings_of(request_class)
    return {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in values.items()
        if name in fields and getattr(ctx.get_parameter_source(name), "name", None) in TYPED
    }


def request_command(
    app: typer.Typer,
    name: str,
    request_class,
    run: Callable[..., None],
    help: str,
    extra: tuple[inspect.Parameter, ...] = (),
) -> None:
    """Register ``name``: its options are ``request_class``'s settings, ``--config`` and ``extra``; it builds the
    request and calls ``run(ctx, request, **extra values)``."""

    def command(ctx: typer.Context, **values):
        config = values.pop(CONFIG)
        extras = {p.name: values.pop(p.name) for p in extra}
        request = request_for(request_class, name, given_values(ctx, request_class, values), config)
        run(ctx, request, **extras)

    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    config = inspect.Parameter(
        CONFIG,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)],
    )
    command.__signature__ = inspect.Signature([context, *option_parameters(request_class), config, *extra])  # type: ignore[attr-defined]
    command.__doc__ = help
    command.__name__ = name.replace("-", "_")
    app.command(name)(user_errors(command))


def option(name: str, annotation, default=inspect.Parameter.empty) -> inspect.Parameter:
    """An extra keyword parameter of a generated command (``annotation``: ``Annotated[type, typer.Option(...)]``)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
