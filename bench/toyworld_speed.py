"""Time the shipped toy-world pipeline: 64 images, default sampler, on CPU.

python bench/toyworld_speed.py [--threads N] [--batch 64] [--repeats 3]
"""

import argparse
import logging
import time

import torch

from locoedit.toyworld import MODEL_DIR, sampling_defaults

logger = logging.getLogger("toyworld_speed")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionPipeline

    defaults = sampling_defaults()
    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL_DIR))
    pipe.set_progress_bar_config(disable=True)
    logger.info("load: %.2f s", time.perf_counter() - t0)
    prompts = ["a red striped circle on black"] * args.batch
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        pipe(
            prompts,
            num_inference_steps=defaults["num_inference_steps"],
            guidance_scale=defaults["guidance_scale"],
            generator=torch.Generator().manual_seed(r),
            output_type="pt",
        )
        times.append(time.perf_counter() - t0)
    logger.info(
        "%d images, %d steps, CFG %.1f, %d threads: best %.2f s, mean %.2f s",
        args.batch,
        defaults["num_inference_steps"],
        defaults["guidance_scale"],
        torch.get_num_threads(),
        min(times),
        sum(times) / len(times),
    )


if __name__ == "__main__":
    main()
