"""Batched vs exact LocoGen sweeps, timed side by side in one run (one torch thread unless --threads).

    python bench/localize_speed.py [--threads 1] [--steps 4] [--repeats 2]

Prints, per layout, the wall time of a full m=2 sweep in exact mode (one denoising loop per window, as the
paper) and in batched mode (``chunk`` windows per loop), and their ratio. Layouts: the tiny SD-1 and SD-XL
test pipelines, and the real-size SD-1.5 UNet architecture (random weights, 8x8 latents, a 1-layer 768-d
text encoder) to show how the gain shrinks as compute grows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from locoedit.models import adapter_for
from locoedit.localize import LocalizationRequest, localize
from locoedit.scoring import PixelScorer
from locoedit.testing import tiny_stable_diffusion, tiny_stable_diffusion_xl


def real_size_sd15(folder: Path):
    """SD-1.5's UNet at full size with random weights, behind a tiny VAE and a one-layer 768-d CLIP text encoder."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from locoedit.testing import _clip_text_config
    from locoedit.models.real_configs import SD15_UNET

    pipe = tiny_stable_diffusion(folder)
    config = _clip_text_config(768, len(pipe.tokenizer))
    config.num_hidden_layers = 1
    pipe.text_encoder = CLIPTextModel(config).eval()
    pipe.unet = UNet2DConditionModel.from_config({**SD15_UNET, "sample_size": 8}).eval()
    return pipe


def time_sweep(adapter, mode: str, chunk: int, steps: int) -> float:
    request = LocalizationRequest(model="bench", prompts=("a house in the style of van gogh",), targets=("a house",),
                                  window=2, seeds=(0, 1), steps=steps, mode=mode, chunk=chunk)
    start = time.perf_counter()
    localize(request, None, adapter, PixelScorer())
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layouts = {"tiny SD-1": (tiny_stable_diffusion, 8), "tiny SD-XL": (tiny_stable_diffusion_xl, 8),
               "real-size SD-1.5 UNet, 8x8 latents": (real_size_sd15, 4)}
    print(f"m=2 sweep, 1 prompt x 2 seeds, {args.steps} steps, {args.threads} thread(s), best of {args.repeats}")
    print(f"{'layout':<36} {'layers':>6} {'exact s':>9} {'batched s':>10} {'speed-up':>9}")
    with tempfile.TemporaryDirectory() as folder:
        for name, (build, chunk) in layouts.items():
            adapter = adapter_for(build(Path(folder) / name.replace(" ", "_")))
            time_sweep(adapter, "batched", chunk, 1)  # warm-up
            exact = min(time_sweep(adapter, "exact", chunk, args.steps) for _ in range(args.repeats))
            batched = min(time_sweep(adapter, "batched", chunk, args.steps) for _ in range(args.repeats))
            print(f"{name:<36} {len(adapter.layers):>6} {exact:>9.2f} {batched:>10.2f} {exact / batched:>8.1f}x")


if __name__ == "__main__":
    main()
