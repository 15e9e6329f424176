"""The toy world: a tiny text-to-image model with ground truth, shipped as locoedit's default model.

``MODEL_DIR`` is a standard diffusers ``StableDiffusionPipeline`` folder; ``PROBE_PATH`` holds the
probe classifiers that read every attribute of a generated picture (see :mod:`.probe`).
"""

from pathlib import Path

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

WEIGHTS_DIR: Path = Path(__file__).with_name("weights")
MODEL_DIR: Path = WEIGHTS_DIR / "pipeline"
PROBE_PATH: Path = WEIGHTS_DIR / "probe.safetensors"
DEFAULTS_PATH: Path = WEIGHTS_DIR / "defaults.json"

__all__ = [
    "ATTRIBUTES", "DEFAULTS_PATH", "MODEL_DIR", "NO_FACT", "NO_STYLE", "PROBE_PATH", "VOCAB_PATH",
    "WEIGHTS_DIR", "caption_for", "complete_scene", "load_vocab", "parse_caption", "render",
    "render_batch", "render_scene", "sample_caption", "sample_scene",
]
