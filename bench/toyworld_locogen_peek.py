"""A quick LocoGen-style peek at the shipped toy world (not the library's LocoGen; a sanity check).

For each attribute, every cross-attention layer gets the *target* prompt (attribute removed) except
a window of consecutive layers (execution order) that gets the original prompt; the probe scores
whether the attribute still appears.

    PYTHONPATH=. python bench/toyworld_locogen_peek.py [--seeds 64] [--steps 10] [--window 3]
"""

import argparse
import logging

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from locoedit.cli.toyworld import load_pipeline
from locoedit.toyworld.probe import ToyworldProbe

logger = logging.getLogger("toyworld_locogen_peek")

CASES = [  # (attribute, original prompt, target prompt, concept scored)
    ("color", "a red striped circle on black", "a striped circle on black", "red"),
    ("texture", "a red striped circle on black", "a red circle on black", "striped"),
    ("shape", "a red striped circle on black", "a red striped shape on black", "circle"),
    ("background", "a red striped circle on black", "a red striped circle", "on black"),
    ("style", "a red striped circle on black in the style of hokusai", "a red striped circle on black", "hokusai"),
]


class Swap:
    """Attention processor that feeds ``alt`` as the text to cross-attention when set."""

    def __init__(self):
        self.base = AttnProcessor2_0()
        self.alt = None  # [2N, tokens, dim] or None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        if encoder_hidden_states is not None and self.alt is not None:
            encoder_hidden_states = self.alt
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kw)


def cross_attention_names(unet) -> list[str]:
    def key(name: str):
        part = name.split(".")
        order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}[part[0]]
        nums = [int(p) for p in part if p.isdigit()]
        return (order, *nums)

    return sorted((n for n, _ in unet.named_modules() if n.endswith("attn2")), key=key)


@torch.no_grad()
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
    pipe = load_pipeline()
    probe = ToyworldProbe.load()
    names = cross_attention_names(pipe.unet)
    swaps = {}
    procs = {}
    for name in pipe.unet.attn_processors:
        if name.removesuffix(".processor") in names:
            swaps[name.removesuffix(".processor")] = procs[name] = Swap()
        else:
            procs[name] = AttnProcessor2_0()
    pipe.unet.set_attn_processor(procs)
    n = args.seeds
    windows = [list(range(i, i + args.window)) for i in range(len(names) - args.window + 1)]
    logger.info("layers (execution order): %s", ", ".join(f"{i}={nm.replace('attentions.', 'a').replace('transformer_blocks.0.attn2', '')}" for i, nm in enumerate(names)))

    def run(prompt_embeds, negative, routed=None, alt=None) -> float:
        for i, nm in enumerate(names):
            swaps[nm].alt = alt if routed is not None and i in routed else None
        out = pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative, num_inference_steps=args.steps,
                   guidance_scale=args.guidance, generator=[torch.Generator().manual_seed(s) for s in range(n)],
                   output_type="pt")
        return out.images

    for attribute, original, target, concept in CASES:
        orig, neg = pipe.encode_prompt(original, "cpu", n, True, "")
        targ, _ = pipe.encode_prompt(target, "cpu", n, True, "")
        alt = torch.cat([neg, orig])  # what the pipeline concatenates for CFG
        base = probe.score(run(targ, neg), concept).mean().item()
        full = probe.score(run(orig, neg), concept).mean().item()
        scores = []
        for w in windows:
            scores.append(probe.score(run(targ, neg, routed=set(w), alt=alt), concept).mean().item())
        best = max(range(len(windows)), key=lambda i: scores[i])
        logger.info("%-10s target-only %.2f, original %.2f | windows %s | best %s",
                    attribute, base, full, " ".join(f"{w[0]}-{w[-1]}:{s:.2f}" for w, s in zip(windows, scores)),
                    f"{windows[best][0]}-{windows[best][-1]}")


if __name__ == "__main__":
    main()
