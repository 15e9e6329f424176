"""Batched vs exact LocoGen sweeps, timed side by side in one run (one torch thread unless --threads).

    python bench/localize_speed.py [--threads 1] [--steps 4] [--repeats 2] [--roofline-only]

Prints, per layout, the wall time of a full m=2 sweep in exact mode (one denoising loop per window, as the
paper) and in batched mode (``chunk`` windows per loop), and their ratio. Layouts: the tiny SD-1 and SD-XL
test pipelines, and the real-size SD-1.5 UNet architecture (random weights, 8x8 latents, a 1-layer 768-d
text encoder) to show how the gain shrinks as compute grows.

Then the roofline of the real-size SD-1.5 sweep (1 prompt x 1 seed, ``--roofline-steps`` steps): its FLOPs counted
with ``torch.utils.flop_counter.FlopCounterMode`` (one counted batched run), the achieved FLOP/s of an exact and a
batched run (timed without the counter), and the machine's fp32 matmul FLOP/s measured here (best of 5 square
2048 x 2048 products), which bounds what any sweep can reach on these threads.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from locoedit.localize import LocalizationRequest, localize
from locoedit.models import adapter_for
from locoedit.scoring import PixelScorer
from locoedit.testing import tiny_stable_diffusion, tiny_stable_diffusion_xl


def real_size_sd15(folder: Path):
    """SD-1.5's UNet at full size with random weights, behind a tiny VAE and a one-layer 768-d CLIP text encoder."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from locoedit.models.real_configs import SD15_UNET
    from locoedit.testing import _clip_text_config

    pipe = tiny_stable_diffusion(folder)
    config = _clip_text_config(768, len(pipe.tokenizer))
    config.num_hidden_layers = 1
    pipe.text_encoder = CLIPTextModel(config).eval()
    pipe.unet = UNet2DConditionModel.from_config({**SD15_UNET, "sample_size": 8}).eval()
    return pipe


def time_sweep(adapter, mode: str, chunk: int, steps: int) -> float:
    request = LocalizationRequest(
        model="bench",
        prompts=("a house in the style of van gogh",),
        targets=("a house",),
        window=2,
        seeds=(0, 1),
        steps=steps,
        mode=mode,
        chunk=chunk,
    )
    start = time.perf_counter()
    localize(request, None, adapter, PixelScorer())
    return time.perf_counter() - start


def _count_cpu_attention():
    """FlopCounterMode knows the fused attention kernels of CUDA but not the CPU one SDPA dispatches to here (torch
    2.13): count it with torch's own SDPA formula, or every attention FLOP would be missed."""
    from torch.utils import flop_counter

    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if cpu_attention not in flop_counter.flop_registry:

        def attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

        flop_counter.register_flop_formula(cpu_attention)(attention_flops)


def matmul_flops_per_second(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def roofline(folder: Path, steps: int, chunk: int) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_attention()
    adapter = adapter_for(real_size_sd15(folder))
    request = LocalizationRequest(
        model="bench",
        prompts=("a house in the style of van gogh",),
        targets=("a house",),
        window=2,
        seeds=(0,),
        steps=steps,
        mode="batched",
        chunk=chunk,
    )
    with FlopCounterMode(display=False) as counter:
        counted = localize(request, None, adapter, PixelScorer())
    flops = counter.get_total_flops()
    seconds = {}
    for mode in ("exact", "batched"):
        start = time.perf_counter()
        localize(replace(request, mode=mode), None, adapter, PixelScorer())
        seconds[mode] = time.perf_counter() - start
    peak = matmul_flops_per_second()
    settings = adapter.settings(steps)
    print(
        f"\nroofline: real-size SD-1.5 UNet, {settings.height}x{settings.width} px, m=2 sweep "
        f"({len(counted.windows)} windows + 2 references), 1 prompt x 1 seed, {steps} steps, chunk {chunk}"
    )
    print(
        f"  FLOPs counted (FlopCounterMode, batched run): {flops / 1e9:.1f} GFLOP "
        f"({counted.timings['denoiser_calls']} denoiser calls)"
    )
    print(f"  measured fp32 matmul (2048^3, {torch.get_num_threads()} thread(s)): {peak / 1e9:.1f} GFLOP/s")
    for mode, wall in seconds.items():
        print(f"  {mode:<8} {wall:7.2f} s  {flops / wall / 1e9:6.1f} GFLOP/s  = {flops / wall / peak:.0%} of matmul")
    print(f"  batched/exact achieved FLOP/s: {seconds['exact'] / seconds['batched']:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each timing")
    parser.add_argument("--roofline-steps", type=int, default=2)
    parser.add_argument("--roofline-only", action="store_true", help="skip the layout table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layouts = {
        "tiny SD-1": (tiny_stable_diffusion, 8),
        "tiny SD-XL": (tiny_stable_diffusion_xl, 8),
        "real-size SD-1.5 UNet, 8x8 latents": (real_size_sd15, 4),
    }
    with tempfile.TemporaryDirectory() as folder:
        if not args.roofline_only:
            table(layouts, args, Path(folder))
        roofline(Path(folder) / "roofline", args.roofline_steps, layouts["real-size SD-1.5 UNet, 8x8 latents"][1])


def table(layouts: dict, args, folder: Path) -> None:
    print(f"m=2 sweep, 1 prompt x 2 seeds, {args.steps} steps, {args.threads} thread(s), best of {args.repeats}")
    print(f"{'layout':<36} {'layers':>6} {'exact s':>9} {'batched s':>10} {'speed-up':>9}")
    for name, (build, chunk) in layouts.items():
        adapter = adapter_for(build(folder / name.replace(" ", "_")))
        time_sweep(adapter, "batched", chunk, 1)  # warm-up
        exact = min(time_sweep(adapter, "exact", chunk, args.steps) for _ in range(args.repeats))
        batched = min(time_sweep(adapter, "batched", chunk, args.steps) for _ in range(args.repeats))
        print(f"{name:<36} {len(adapter.layers):>6} {exact:>9.2f} {batched:>10.2f} {exact / batched:>8.1f}x")


if __name__ == "__main__":
    main()
