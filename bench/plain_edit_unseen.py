"""The plain `locoedit edit` (every option at its default) on toy-world concepts and prompts no suite holds.

For each case: compute the edit exactly as `locoedit edit toyworld --concept C --target T --kind K` does (auto layers,
the model folder's templates and rows, default preservation), then generate fresh random captions (``--prompts`` per
group, drawn with a fixed seed from the toy world's vocabulary) with ``--seeds`` seeds each, before and after, and read
them with the probe:

- efficacy: concept captions whose image no longer shows the concept (a fact: its colour, shape and texture);
- specificity: neighbour captions (another value of the same attribute) and unrelated captions (without it) whose
  image shows every attribute the caption states, after relative to before;
- identity: neighbour and unrelated images whose every probe-read attribute is unchanged.

    python bench/plain_edit_unseen.py [--cases triangle,hokusai] [--prompts 12] [--seeds 2]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

torch.set_num_threads(1)

from locoedit.edit import EditRequest, compute_edit  # noqa: E402
from locoedit.models import load_adapter  # noqa: E402
from locoedit.toyworld import caption_for, load_vocab, parse_caption  # noqa: E402
from locoedit.toyworld.probe import ToyworldProbe  # noqa: E402

VOCAB = load_vocab()
# (attribute, value, --concept, --target, --kind): none of these is the subject of a shipped suite's edit except the
# style of the demo's neighbours; the captions below are drawn fresh.
CASES = [
    ("shape", "triangle", "triangle", "cross", "object"),
    ("shape", "square", "square", "circle", "object"),
    ("color", "green", "green", "red", "object"),
    ("texture", "dotted", "dotted", "striped", "object"),
    ("style", "hokusai", "in the style of hokusai", "", "style"),
    ("style", "klimt", "in the style of klimt", "", "style"),
    ("fact", "the ocean", "the ocean", "a red circle", "fact"),
    ("fact", "the flag", "the flag", "a blue square", "fact"),
]
VALUES = {
    "color": list(VOCAB.colors),
    "shape": list(VOCAB.shapes),
    "texture": list(VOCAB.textures),
    "background": list(VOCAB.backgrounds),
    "style": list(VOCAB.styles),
    "fact": list(VOCAB.facts),
}


def scene(rng, **fixed) -> dict[str, str]:
    chosen = {}
    for attribute, chance in (("color", 0.8), ("texture", 0.6), ("shape", 0.85), ("background", 0.7), ("style", 0.3)):
        if rng.random() < chance:
            chosen[attribute] = rng.choice(VALUES[attribute])
    chosen.update(fixed)
    return {k: v for k, v in chosen.items() if v is not None}


def fact_scene(rng, fact: str) -> dict[str, str]:
    chosen = {"fact": fact}
    if rng.random() < 0.7:
        chosen["background"] = rng.choice(VALUES["background"])
    if rng.random() < 0.3:
        chosen["style"] = rng.choice(VALUES["style"])
    return chosen


def captions(attribute: str, value: str, rng, count: int) -> dict[str, list[str]]:
    others = [v for v in VALUES[attribute] if v != value]
    if attribute == "fact":
        return {
            "concept": [caption_for(fact_scene(rng, value)) for _ in range(count)],
            "neighbours": [caption_for(fact_scene(rng, rng.choice(others))) for _ in range(count)],
            "unrelated": [caption_for(scene(rng)) for _ in range(count)],
        }
    return {
        "concept": [caption_for(scene(rng, **{attribute: value})) for _ in range(count)],
        "neighbours": [caption_for(scene(rng, **{attribute: rng.choice(others)})) for _ in range(count)],
        "unrelated": [caption_for(scene(rng, **{attribute: None})) for _ in range(count)]
        + [caption_for(fact_scene(rng, rng.choice(VALUES["fact"]))) for _ in range(count // 3)],
    }


def shows_concept(seen: dict[str, str], attribute: str, value: str) -> bool:
    if attribute == "fact":
        return all(seen[a] == v for a, v in VOCAB.facts[value].items())
    return seen[attribute] == value


def follows(seen: dict[str, str], caption: str) -> bool:
    return all(seen.get(a) == v for a, v in parse_caption(caption).items() if a in seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(case[1] for case in CASES))
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=None, help="--threshold of the edit (default: the edit's)")
    args = parser.parse_args()
    adapter = load_adapter("toyworld", device="cpu")
    probe = ToyworldProbe.load()
    settings = adapter.settings()
    seeds = list(range(args.seeds))
    wanted = args.cases.split(",")
    print("| edit | layers | efficacy | specificity | identity | time |\n|---|---|---|---|---|---|")
    for attribute, value, concept, target, kind in (c for c in CASES if c[1] in wanted):
        started = time.perf_counter()
        request = EditRequest(model="toyworld", concepts=(concept,), targets=(target,), kind=kind)
        if args.threshold is not None:
            request = replace(request, auto_threshold=args.threshold)
        delta = compute_edit(adapter, request)
        groups = captions(attribute, value, np.random.default_rng(5), args.prompts)
        figures = {}
        for group, prompts in groups.items():
            rows = [(p, s) for p in prompts for s in seeds]
            encoded = adapter.encode([p for p, _ in rows])
            before = probe.predict(adapter.generate(encoded, [s for _, s in rows], settings))
            after = probe.predict(adapter.generate(encoded, [s for _, s in rows], settings, [delta]))
            if group == "concept":
                figures["efficacy"] = np.mean([not shows_concept(a, attribute, value) for a in after])
            else:
                kept_before = np.mean([follows(b, p) for b, (p, _) in zip(before, rows)])
                kept_after = np.mean([follows(a, p) for a, (p, _) in zip(after, rows)])
                figures[f"{group}_specificity"] = kept_after / kept_before
                figures[f"{group}_identity"] = np.mean([a == b for a, b in zip(after, before)])
        specificity = (figures["neighbours_specificity"] + figures["unrelated_specificity"]) / 2
        identity = (figures["neighbours_identity"] + figures["unrelated_identity"]) / 2
        layers = [layer["index"] for layer in delta.layers]
        shown = f"{concept} -> {target!r}" if target else f"remove {concept!r}"
        print(
            f"| {kind} {shown} | {layers[0]}-{layers[-1]} | {figures['efficacy']:.0%} | {specificity:.0%} | "
            f"{identity:.0%} | {time.perf_counter() - started:.0f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
