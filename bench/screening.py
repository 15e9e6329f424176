"""Screening against the full sweep on the toy world, measured side by side in one run (one torch thread).

    python bench/screening.py [--seeds 4] [--window 3] [--screens 1:1:1 2:1:1 ...]

For every case (a concept and two prompts that show it: colours, objects, textures, styles and facts), LocoGen runs the
full sweep (the toy world's 20 steps, ``--seeds`` seeds, windows of ``--window``, the probe as scorer) and then each
screened sweep. Per screen it prints: top-1 agreement (the screened run chooses the full sweep's window), near-best
(the chosen window's full-budget effect is within 0.02 of the best), the fraction of denoiser calls used (counted by
LocoGen: one per image and step) and the wall-time ratio, both summed over the cases.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from locoedit.localize import LocalizationRequest, Screen, localize
from locoedit.models import load_adapter
from locoedit.scoring import make_scorer

COLOURS, SHAPES, TEXTURES = (
    ("red", "green", "blue", "yellow"),
    ("circle", "square", "triangle", "cross"),
    ("striped", "dotted"),
)
STYLES, FACTS = ("kandinsky", "hokusai", "klimt"), ("the sun", "the ocean", "the forest", "the flag")
NEAR = 0.02  # probe units: a window this close to the best removes as much of the concept


def cases() -> list[tuple[str, str, list[str], list[str]]]:
    """(kind, concept, prompts, targets): 24 cases, each concept in two prompts the target prompts drop it from."""
    found = []
    for colour in COLOURS:
        found.append(
            (
                "colour",
                colour,
                [f"a {colour} square on white", f"a {colour} triangle on gray"],
                ["a square on white", "a triangle on gray"],
            )
        )
        found.append(
            (
                "colour",
                colour,
                [f"a {colour} striped circle on black", f"a {colour} cross on white"],
                ["a striped circle on black", "a cross on white"],
            )
        )
    for shape, colour in zip(SHAPES, COLOURS):
        found.append(
            (
                "object",
                shape,
                [f"a {colour} {shape} on black", f"a blue dotted {shape} on white"],
                [f"a {colour} shape on black", "a blue dotted shape on white"],
            )
        )
        found.append(
            (
                "object",
                shape,
                [f"a {shape} on gray", f"a green striped {shape}"],
                ["a shape on gray", "a green striped shape"],
            )
        )
    for texture in TEXTURES:
        found.append(
            (
                "texture",
                texture,
                [f"a red {texture} circle on black", f"a yellow {texture} square on white"],
                ["a red circle on black", "a yellow square on white"],
            )
        )
    for style in STYLES:
        found.append(
            (
                "style",
                f"in the style of {style}",
                [f"a red circle on black in the style of {style}", f"a blue square on white in the style of {style}"],
                ["a red circle on black", "a blue square on white"],
            )
        )
    for fact in FACTS:
        found.append(("fact", fact, [f"{fact} on black", f"{fact} on white"], ["a shape on black", "a shape on white"]))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--screens", nargs="+", default=["1:1:1", "2:1:1", "4:1:1", "2:2:1", "1:1:2", "2:1:2", "4:1:2"])
    parser.add_argument("--cases", type=int, default=None, help="only the first N cases (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    adapter = load_adapter("toyworld", device="cpu")
    scorer = make_scorer("toyworld")
    screens = [Screen.parse(text) for text in args.screens]
    totals = {str(s): {"agree": 0, "near": 0, "calls": 0, "seconds": 0.0} for s in screens}
    full_calls = full_seconds = 0.0
    all_cases = cases()[: args.cases]
    print(
        f"toy world, windows of {args.window}, 2 prompts x {args.seeds} seeds, "
        f"{adapter.default_settings().num_inference_steps} steps, {args.threads} thread(s), {len(all_cases)} cases"
    )
    print(f"{'case':<40} {'full':>8} " + " ".join(f"{str(s):>7}" for s in screens))
    for kind, concept, prompts, targets in all_cases:
        request = LocalizationRequest(
            model="toyworld",
            prompts=tuple(prompts),
            targets=tuple(targets),
            concept=concept,
            window=args.window,
            seeds=tuple(range(args.seeds)),
        )
        start = time.perf_counter()
        full = localize(request, None, adapter, scorer)
        full_seconds += time.perf_counter() - start
        full_calls += full.timings["denoiser_calls"]
        effects = {tuple(w.layers): w.effect for w in full.windows}
        best = max(effects.values())
        cells = []
        for screen in screens:
            start = time.perf_counter()
            screened = localize(replace(request, screen=screen), None, adapter, scorer)
            total = totals[str(screen)]
            total["seconds"] += time.perf_counter() - start
            total["calls"] += screened.timings["denoiser_calls"]
            chosen = tuple(screened.chosen.layers)
            total["agree"] += chosen == tuple(full.chosen.layers)
            total["near"] += effects[chosen] >= best - NEAR
            cells.append(f"{chosen[0]}-{chosen[-1]}" + ("" if chosen == tuple(full.chosen.layers) else "*"))
        first, last = full.chosen.layers[0], full.chosen.layers[-1]
        print(f"{kind + ': ' + concept:<40} {f'{first}-{last}':>8} " + " ".join(f"{c:>7}" for c in cells), flush=True)
    count = len(all_cases)
    print(
        f"\n(* : not the full sweep's window)\n\n| screen | cases | top-1 agreement | within {NEAR} of the best | "
        "denoiser calls | wall time |\n|---|---|---|---|---|---|"
    )
    for screen in screens:
        total = totals[str(screen)]
        print(
            f"| {screen} | {count} | {total['agree'] / count:.0%} | {total['near'] / count:.0%} | "
            f"{total['calls'] / full_calls:.3f} | {total['seconds'] / full_seconds:.3f} |"
        )
    print(f"\nfull sweeps: {full_seconds:.1f} s for {count} cases")


if __name__ == "__main__":
    main()
