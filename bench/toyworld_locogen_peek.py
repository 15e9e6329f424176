"""A quick peek at where the shipped toy world keeps each attribute: the inverse of LocoGen's swap.

For each attribute, every cross-attention layer reads the *target* prompt (attribute removed) except a window of
consecutive layers (execution order) that reads the *original* prompt; the probe scores whether the attribute
still appears. Same text routing intervention as ``locoedit localize``, with the prompts' roles exchanged.

    python bench/toyworld_locogen_peek.py [--seeds 64] [--steps 10] [--window 3]
"""

import argparse
import logging

import torch

from locoedit.interventions import Routing, TextRouting
from locoedit.models import load_adapter
from locoedit.toyworld.probe import ToyworldProbe

logger = logging.getLogger("toyworld_locogen_peek")

CASES = [  # (attribute, original prompt, target prompt, concept scored)
    ("color", "a red striped circle on black", "a striped circle on black", "red"),
    ("texture", "a red striped circle on black", "a red circle on black", "striped"),
    ("shape", "a red striped circle on black", "a red striped shape on black", "circle"),
    ("background", "a red striped circle on black", "a red striped circle", "on black"),
    ("style", "a red striped circle on black in the style of hokusai", "a red striped circle on black", "hokusai"),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--window", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    adapter = load_adapter("toyworld", device="cpu")
    probe = ToyworldProbe.load()
    settings = adapter.settings(steps=args.steps, guidance=args.guidance)
    seeds = list(range(args.seeds))
    layers = len(adapter.layers)
    windows = [list(range(i, i + args.window)) for i in range(layers - args.window + 1)]
    logger.info("layers (execution order): %s", ", ".join(f"{layer.index}={layer.block}" for layer in adapter.layers))
    for attribute, original, target, concept in CASES:
        encoded = adapter.encode([target, original]).take([0] * len(seeds) + [1] * len(seeds))
        targets, originals = (
            encoded.take(list(range(len(seeds)))),
            encoded.take(list(range(len(seeds), 2 * len(seeds)))),
        )

        def score(images, concept=concept) -> float:
            return probe.score(images, concept).mean().item()

        base = score(adapter.generate(targets, seeds, settings))
        full = score(adapter.generate(originals, seeds, settings))
        scores = [
            score(
                adapter.generate(
                    targets, seeds, settings, [TextRouting(Routing.uniform(w, len(seeds)), originals.conditional)]
                )
            )
            for w in windows
        ]
        best = max(range(len(windows)), key=lambda i: scores[i])
        logger.info(
            "%-10s target-only %.2f, original %.2f | windows %s | best %s",
            attribute,
            base,
            full,
            " ".join(f"{w[0]}-{w[-1]}:{s:.2f}" for w, s in zip(windows, scores)),
            f"{windows[best][0]}-{windows[best][-1]}",
        )


if __name__ == "__main__":
    main()
