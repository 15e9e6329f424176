"""One adapter per model family, and loading a pipeline by hub id, local folder or a registered short name.

Short names (:data:`NAMED_MODELS`) map to folders shipped with locoedit; the toy world registers itself there. A
model folder may hold ``locoedit.json`` (:class:`ModelSettings`): the generation settings and the concept scorer it
is meant to be used with, and presets of any command's settings. Nothing above this package branches on a model's
name or family. Names are imported on first use, so reading model names loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from locoedit.core.lazy import lazy_exports

if TYPE_CHECKING:
    from locoedit.models.base import (
        Adapter,
        EditDefaults,
        EncodedPrompts,
        GenerationSettings,
        Intervention,
        ModelSettings,
        PromptTokens,
        TextConditioning,
    )
    from locoedit.models.names import DEFAULTS_FILE, NAMED_MODELS, model_presets, resolve_model
    from locoedit.models.registry import ADAPTERS, adapter_for, check_device, check_model, load_adapter

_WHERE = {
    **dict.fromkeys(
        (
            "Adapter",
            "EditDefaults",
            "EncodedPrompts",
            "GenerationSettings",
            "Intervention",
            "ModelSettings",
            "PromptTokens",
            "TextConditioning",
        ),
        "base",
    ),
    **dict.fromkeys(("DEFAULTS_FILE", "NAMED_MODELS", "model_presets", "resolve_model"), "names"),
    **dict.fromkeys(("ADAPTERS", "adapter_for", "check_device", "check_model", "load_adapter"), "registry"),
}

__all__ = [
    "ADAPTERS",
    "DEFAULTS_FILE",
    "NAMED_MODELS",
    "Adapter",
    "EditDefaults",
    "EncodedPrompts",
    "GenerationSettings",
    "Intervention",
    "ModelSettings",
    "PromptTokens",
    "TextConditioning",
    "adapter_for",
    "check_device",
    "check_model",
    "load_adapter",
    "model_presets",
    "resolve_model",
]

__getattr__ = lazy_exports(__name__, _WHERE)
