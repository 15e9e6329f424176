"""The toy world: a tiny text-to-image model with ground truth, shipped as locoedit's default model.

``MODEL_DIR`` is a standard diffusers ``StableDiffusionPipeline`` folder; ``MMDIT_DIR`` a standard
``StableDiffusion3Pipeline`` folder with the same VAE and text encoder (joint attention instead of
cross-attention); ``PROBE_PATH`` holds the probe classifiers that read every attribute of a generated picture
(see :mod:`.probe`).
"""

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .world import (
        ATTRIBUTES,
        NO_FACT,
        NO_STYLE,
        VOCAB_PATH,
        caption_for,
        complete_scene,
        load_vocab,
        parse_caption,
        render,
        render_batch,
        render_scene,
        sample_caption,
        sample_scene,
    )

_FROM_WORLD = (
    "ATTRIBUTES",
    "NO_FACT",
    "NO_STYLE",
    "VOCAB_PATH",
    "caption_for",
    "complete_scene",
    "load_vocab",
    "parse_caption",
    "render",
    "render_batch",
    "render_scene",
    "sample_caption",
    "sample_scene",
)

WEIGHTS_DIR: Path = Path(__file__).with_name("weights")
MODEL_DIR: Path = WEIGHTS_DIR / "pipeline"
MMDIT_DIR: Path = WEIGHTS_DIR / "mmdit"  # the same world, denoised by an SD3 transformer (StableDiffusion3Pipeline)
PROBE_PATH: Path = WEIGHTS_DIR / "probe.safetensors"
MODEL_SETTINGS_PATH: Path = MODEL_DIR / "locoedit.json"  # how the model is sampled and scored (the one source)


def sampling_defaults(model_dir: str | Path | None = None) -> dict:
    """The generation settings a toy-world pipeline folder recommends (its ``locoedit.json``)."""
    path = MODEL_SETTINGS_PATH if model_dir is None else Path(model_dir) / "locoedit.json"
    return json.loads(path.read_text())["generation"]


__all__ = [
    "ATTRIBUTES",
    "MMDIT_DIR",
    "MODEL_DIR",
    "MODEL_SETTINGS_PATH",
    "NO_FACT",
    "NO_STYLE",
    "PROBE_PATH",
    "VOCAB_PATH",
    "WEIGHTS_DIR",
    "caption_for",
    "complete_scene",
    "load_vocab",
    "parse_caption",
    "render",
    "render_batch",
    "render_scene",
    "sample_caption",
    "sample_scene",
    "sampling_defaults",
]


def __getattr__(name: str):  # the world (and numpy) load on first use: model paths are read without them
    if name not in _FROM_WORLD:
        raise AttributeError(f"module 'locoedit.toyworld' has no attribute {name!r}")
    return getattr(importlib.import_module("locoedit.toyworld.world"), name)
