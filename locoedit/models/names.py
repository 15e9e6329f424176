"""Model names without loading anything: the short names of shipped models, and what a model folder recommends
(``locoedit.json``: generation settings, the concept scorer, edit defaults, and presets of any command's settings).
Imports no torch, so front ends read presets before any work starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from locoedit import toyworld
from locoedit.core.errors import LocoeditError
from locoedit.core.params import merged_values, read_config, settings_of

DEFAULTS_FILE = "locoedit.json"  # optional, in a pipeline folder: the settings that model is meant to be used with

# short name -> shipped pipeline folder: the toy world's UNet (SD-1 layout) and its MMDiT (SD3 layout)
NAMED_MODELS: dict[str, Path] = {"toyworld": toyworld.MODEL_DIR, "toyworld-mmdit": toyworld.MMDIT_DIR}


def resolve_model(model: str) -> str:
    """A local folder path or a hub id for ``model``; a short name of :data:`NAMED_MODELS` is its shipped folder."""
    return str(NAMED_MODELS[model]) if model in NAMED_MODELS else model


def model_presets(model: str, command: str) -> dict[str, Any]:
    """The settings a model folder's ``locoedit.json`` presets for ``command`` (its ``"presets": {"edit": {...}}``);
    nothing for a hub id or a folder without presets."""
    file = Path(resolve_model(model)).expanduser() / DEFAULTS_FILE
    if not file.is_file():
        return {}
    try:
        presets = json.loads(file.read_text()).get("presets", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise LocoeditError(f"{file} is damaged ({error}); it must be a JSON object") from None
    chosen = presets.get(command, {}) if isinstance(presets, dict) else None
    if not isinstance(chosen, dict):
        raise LocoeditError(f'{file}: presets.{command} must be an object of settings, e.g. {{"lambda_key": 0.2}}')
    return {key.replace("-", "_"): value for key, value in chosen.items()}


def request_for(request_class, command: str, given: dict[str, Any], config: str | Path | None = None):
    """The request a front end asks for: the values ``given`` (typed on the command line or in a form) over a
    ``config`` file (JSON or TOML) over the model folder's presets for ``command`` over the request's defaults.
    Text is read as each setting reads it (``"0-3"`` for seeds, ``"8,9"`` for layers), wherever it comes from."""
    from_config = read_config(config) if config is not None else {}
    model = given.get("model") or from_config.get("model")
    layers = [(f"{model}'s presets for {command}", model_presets(model, command))] if model else []
    if config is not None:
        layers.append((f"config file {config}", from_config))
    layers.append(("the command line", given))
    values = merged_values(request_class, *layers)
    declared = settings_of(request_class)
    return request_class(
        **{name: declared[name][1].read(value) if name in declared else value for name, value in values.items()}
    )
