"""The shipped toy MMDiT (``toyworld-mmdit``): a plain StableDiffusion3Pipeline that follows the toy world's captions."""

import json

import numpy as np
import pytest
import torch

from locoedit.toyworld import MMDIT_DIR, PROBE_PATH, sampling_defaults
from locoedit.toyworld.models import MMDIT_DEFAULTS, MODEL_SETTINGS, load_pipeline
from locoedit.toyworld.probe import ToyworldProbe

torch.set_num_threads(1)

#: Floors on seeds 0-7 (8 object + 8 fact prompts), one miss below what the shipped weights score there, so that
#: float round-off of another BLAS flipping one picture does not fail. Measured on the shipped weights (step 2000):
#: texture 5/8 (its weakest attribute, 90% on seeds 0-99), every other attribute 8/8.
AGREEMENT_FLOOR = 44 / 48  # mean over attributes (measured 45/48)
ATTRIBUTE_FLOOR = 4 / 8  # each attribute (measured: texture 5/8)


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(MMDIT_DIR)


def test_the_shipped_mmdit_is_a_plain_sd3_pipeline_without_t5(pipe):
    from diffusers import StableDiffusion3Pipeline

    assert type(pipe) is StableDiffusion3Pipeline and pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    assert pipe.transformer.dtype == torch.float32  # shipped in float16, loaded as float32
    assert json.loads((MMDIT_DIR / "locoedit.json").read_text()) == {**MODEL_SETTINGS, "generation": MMDIT_DEFAULTS}
    assert sampling_defaults(MMDIT_DIR) == MMDIT_DEFAULTS
    assert (MMDIT_DIR.parent / "probe.safetensors") == PROBE_PATH  # the UNet's probe reads its pictures too


def test_the_short_name_loads_it_through_the_sd3_adapter():
    from locoedit.models import load_adapter

    adapter = load_adapter("toyworld-mmdit", device="cpu")
    assert type(adapter).__name__ == "StableDiffusion3Adapter"
    assert adapter.recommended.scorer == "toyworld"
    assert adapter.default_settings().to_json() == MMDIT_DEFAULTS
    assert [layer.block for layer in adapter.layers] == [f"joint.{i}" for i in range(6)]
    assert {layer.stream for layer in adapter.layers} == {"dual"}


def test_generated_pictures_follow_held_out_captions(pipe):
    from locoedit.toyworld.evaluate import check_prompt_following

    result = check_prompt_following(
        pipe,
        ToyworldProbe.load(PROBE_PATH),
        seeds=range(8),
        steps=MMDIT_DEFAULTS["num_inference_steps"],
        guidance=MMDIT_DEFAULTS["guidance_scale"],
    )
    acc = result["accuracy"]
    mean = float(np.mean([acc[a] for a in ("color", "background", "texture", "shape", "style", "fact")]))
    assert mean >= AGREEMENT_FLOOR, acc
    assert min(acc.values()) >= ATTRIBUTE_FLOOR, acc
