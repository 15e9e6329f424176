"""Measured prompt following: generate from held-out captions and read the pictures with the probe."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from .world import NO_STYLE, caption_for, load_vocab, parse_caption

logger = logging.getLogger(__name__)

#: Per-attribute accuracy targets of the toy-world issue.
TARGETS = {"color": 0.95, "background": 0.95, "texture": 0.90, "style": 0.90, "shape": 0.85, "fact": 0.90}


def check_prompts(seeds: Sequence[int]) -> list[tuple[int, str, dict[str, str]]]:
    """The check's prompts: for every seed one held-out object caption (with a style, or none,
    in rotation) and one fact caption. Returns (seed, caption, expected attributes) triples."""
    vocab = load_vocab()
    styles = (NO_STYLE, *vocab.styles)
    facts = tuple(vocab.facts)
    backgrounds = tuple(vocab.backgrounds)
    out = []
    for seed in seeds:
        attrs = parse_caption(vocab.held_out[seed % len(vocab.held_out)])
        attrs["style"] = styles[seed % len(styles)]
        out.append((seed, caption_for(attrs), attrs))
        fact = {"fact": facts[seed % len(facts)], "background": backgrounds[(seed // len(facts)) % 3]}
        caption = caption_for(fact)
        out.append((seed, caption, {**parse_caption(caption), "style": NO_STYLE}))
    return out


@torch.no_grad()
def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    guidance: float,
    batch_size: int = 128,
    on_images: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Generate one picture per (prompt, seed); each picture has its own generator, so results do
    not depend on batching. ``on_images(n)`` is called after each batch of ``n`` pictures.
    Returns float [N, 3, H, W] in [0, 1]."""
    images = []
    for start in range(0, len(prompts), batch_size):
        p = list(prompts[start : start + batch_size])
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        out = pipe(
            prompt=p,
            generator=gens,
            num_inference_steps=steps,
            guidance_scale=guidance,
            output_type="pt",
            height=32,
            width=32,
        )
        images.append(out.images.float().cpu())
        if on_images is not None:
            on_images(len(p))
    return torch.cat(images)


def check_prompt_following(
    pipe,
    probe,
    seeds: Sequence[int] = range(100),
    steps: int = 20,
    guidance: float = 3.0,
    batch_size: int = 128,
    on_images: Callable[[int], None] | None = None,
) -> dict:
    """Per-attribute accuracy of the probe's reading against the prompts.

    color, background, texture, shape and style are measured on held-out object captions (style
    "none" counts: no treatment must be drawn); fact is measured on fact captions ("the sun on
    gray") and is correct when color, shape and texture all match the fact's fixed look.

    Returns:
        {"accuracy": {attribute: float}, "targets": TARGETS, "n_object": int, "n_fact": int,
         "settings": {...}, "samples": [{"seed", "prompt", "expected", "predicted"}]}
    """
    triples = check_prompts(list(seeds))
    images = generate(pipe, [t[1] for t in triples], [t[0] for t in triples], steps, guidance, batch_size, on_images)
    predicted = probe.predict(images)
    hits: dict[str, list[bool]] = {a: [] for a in TARGETS}
    hits["fact_background"] = []
    samples = []
    for (seed, prompt, expected), pred in zip(triples, predicted):
        if "fact" in expected:
            hits["fact"].append(all(pred[a] == expected[a] for a in ("color", "shape", "texture")))
            hits["fact_background"].append(pred["background"] == expected["background"])
        else:
            for a in ("color", "background", "texture", "shape", "style"):
                hits[a].append(pred[a] == expected[a])
        samples.append({"seed": seed, "prompt": prompt, "expected": expected, "predicted": pred})
    accuracy = {a: sum(h) / len(h) for a, h in hits.items() if h}
    return {
        "accuracy": accuracy,
        "targets": dict(TARGETS),
        "n_object": len(hits["color"]),
        "n_fact": len(hits["fact"]),
        "settings": {"steps": steps, "guidance": guidance, "seeds": [min(seeds), max(seeds)] if len(seeds) else []},
        "samples": samples,
    }


def format_table(result: dict) -> str:
    """A Markdown table of a :func:`check_prompt_following` result."""
    rows = ["| attribute | accuracy | target | met |", "|---|---|---|---|"]
    for a, acc in result["accuracy"].items():
        target = result["targets"].get(a)
        met = "" if target is None else ("yes" if acc >= target else "NO")
        rows.append(f"| {a} | {acc:.1%} | {'' if target is None else f'{target:.0%}'} | {met} |")
    return "\n".join(rows)
