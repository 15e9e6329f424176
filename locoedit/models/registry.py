"""The adapter of each pipeline family, and loading a pipeline by hub id, local folder or a short name."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from locoedit.core.errors import LocoeditError
from locoedit.models.base import (
    Adapter,
    ModelSettings,
)
from locoedit.models.deepfloyd_if import DeepFloydIFAdapter
from locoedit.models.flux import FluxAdapter
from locoedit.models.names import DEFAULTS_FILE, resolve_model
from locoedit.models.pixart import PixArtAlphaAdapter
from locoedit.models.stable_diffusion import StableDiffusionAdapter
from locoedit.models.stable_diffusion_3 import StableDiffusion3Adapter
from locoedit.models.stable_diffusion_xl import StableDiffusionXLAdapter

logger = logging.getLogger(__name__)


ADAPTERS: dict[str, type[Adapter]] = {
    cls.pipeline_class_name: cls
    for cls in (
        StableDiffusionAdapter,
        StableDiffusionXLAdapter,
        DeepFloydIFAdapter,
        PixArtAlphaAdapter,
        StableDiffusion3Adapter,
        FluxAdapter,
    )
}

# Components that are not needed to generate and that would otherwise be fetched or warn offline.
_LOAD_OPTIONS: dict[str, dict[str, object]] = {
    "StableDiffusionPipeline": {"safety_checker": None, "requires_safety_checker": False},
    "StableDiffusionXLPipeline": {"add_watermarker": False},
    "IFPipeline": {"safety_checker": None, "watermarker": None, "requires_safety_checker": False},
    "PixArtAlphaPipeline": {},
    "StableDiffusion3Pipeline": {},
    "FluxPipeline": {},
}


def _unsupported(class_name: str, where: str) -> LocoeditError:
    return LocoeditError(
        f"{where} is a {class_name}, which locoedit does not support; supported pipelines: {', '.join(ADAPTERS)}"
    )


def adapter_for(pipe) -> Adapter:
    """The adapter for an already loaded diffusers pipeline."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in ADAPTERS:
            return ADAPTERS[cls.__name__](pipe)
    raise _unsupported(type(pipe).__name__, "the pipeline")


def _pipeline_class_name(model: str) -> str:
    return _model_index(model)["_class_name"]


def _absent_components(model: str) -> dict[str, None]:
    """Components a pipeline folder was saved without (``[null, null]`` in model_index.json, e.g. an SD3 pipeline
    without T5): diffusers refuses to load such a folder unless they are passed as None."""
    index = _model_index(model)
    return {
        name: None
        for name, entry in index.items()
        if not name.startswith("_") and isinstance(entry, list) and entry and all(part is None for part in entry)
    }


def _model_index(model: str) -> dict:
    """The pipeline's model_index.json (a local folder's or a hub id's), its _class_name checked."""
    path = Path(model).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise LocoeditError(
                f"{model} is a folder but not a diffusers pipeline (no model_index.json); "
                "point at a folder written by save_pretrained, or at a hub id"
            )
        try:
            config = json.loads(index.read_text())
            class_name = config["_class_name"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise LocoeditError(
                f"{index} is damaged ({type(error).__name__}: {error}); it must be a JSON object naming the pipeline's "
                "_class_name, as save_pretrained writes it"
            ) from None
        if not isinstance(class_name, str):
            raise LocoeditError(f"{index} names no pipeline class (_class_name is {class_name!r})")
        return config
    if path.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
        raise LocoeditError(f"model folder {model} does not exist; give an existing local folder or a hub id")
    from diffusers import DiffusionPipeline

    try:
        config = dict(DiffusionPipeline.load_config(model))
        if "_class_name" not in config:
            raise KeyError("_class_name")  # not a pipeline's config
        return config
    except Exception as error:  # the hub client raises many types for offline, missing and gated repos
        raise LocoeditError(
            f"model {model!r} is neither a local folder nor available from the hub ({type(error).__name__}); "
            "weights must be local or reachable: download them into a folder (or the hub cache) and pass that"
        ) from error


def check_model(model: str) -> str:
    """The pipeline class of ``model`` (a hub id or local folder), read from its model_index.json without loading
    weights; a LocoeditError when there is no such model or locoedit does not support its pipeline."""
    class_name = _pipeline_class_name(resolve_model(model))
    if class_name not in ADAPTERS:
        raise _unsupported(class_name, repr(model))
    return class_name


def load_adapter(model: str, dtype: torch.dtype = torch.float32, device: str | None = None) -> Adapter:
    """Load a supported pipeline from a hub id or local folder and wrap it in its family's adapter."""
    import diffusers

    location = resolve_model(model)
    class_name = check_model(model)
    device = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = _folder_settings(location)
    try:
        with _quiet_loading():
            options = {**_absent_components(location), **_LOAD_OPTIONS[class_name]}
            pipe = getattr(diffusers, class_name).from_pretrained(location, dtype=dtype, **options)
    except Exception as error:  # a damaged folder fails in diffusers, transformers or safetensors, each its own way
        raise LocoeditError(
            f"model {model!r} could not be loaded: {type(error).__name__}: {str(error).splitlines()[0][:300]}; "
            "the folder is damaged or incomplete (write it again with save_pretrained)"
        ) from None
    logger.info("loaded %s from %s on %s (%s)", class_name, location, device, dtype)
    return ADAPTERS[class_name](pipe.to(device), settings)


def check_device(device: str) -> str:
    """``device`` if torch knows it and this machine has it; a LocoeditError naming what there is otherwise."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise LocoeditError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N (--device)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (parsed.index or 0) >= count:
            raise LocoeditError(
                f"device {device!r} is not on this machine ({count} CUDA devices); use --device cpu"
                + (f" or cuda:0..cuda:{count - 1}" if count else "")
            )
    elif parsed.type != "cpu" and not getattr(torch, parsed.type, None):
        raise LocoeditError(f"device {device!r} is not available here; use --device cpu")
    return device


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Without diffusers' and transformers' own loading bars: progress is the front end's to draw."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    enabled = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in enabled:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was_enabled in enabled:
            if was_enabled:
                lib.enable_progress_bar()


def _folder_settings(location: str) -> ModelSettings:
    """What a model folder recommends in ``locoedit.json``; nothing for a hub id or a folder without one."""
    file = Path(location) / DEFAULTS_FILE
    if not file.is_file():
        return ModelSettings()
    settings = ModelSettings.read(file)
    edit = settings.edit
    if edit is not None and edit.corpus is not None:  # named relative to the folder
        corpus = Path(location) / edit.corpus
        if not corpus.is_file():
            raise LocoeditError(
                f"{file} names the preservation corpus {edit.corpus!r}, which is not in {location}; "
                "put the file there or remove edit.corpus"
            )
        settings = replace(settings, edit=replace(edit, corpus=str(corpus)))
    return settings
