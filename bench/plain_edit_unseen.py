"""The plain `locoedit edit` (every option at its default) on toy-world concepts and prompts no suite holds.

For each case: compute the edit exactly as `locoedit edit toyworld --concept C --target T --kind K` does (auto layers,
the model folder's templates and rows, default preservation), then generate fresh random captions (``--prompts`` per
group, drawn with a fixed seed from the toy world's vocabulary) with ``--seeds`` seeds each, before and after, and read
them with the probe:

- efficacy: concept captions whose image no longer shows the concept (a fact: its colour, shape and texture);
- target adoption: concept captions whose image shows every attribute the target states (none for a removal);
- neighbours kept / unrelated kept: neighbour captions (another value of the same attribute) and unrelated captions
  (without it) whose image shows every attribute the caption states, after relative to before;
- look-alikes kept: captions entangled with the concept, the same way: a fact's look said in words ("a blue striped
  square" for the ocean), the facts whose look carries an edited attribute ("the forest" for triangle);
- identity: neighbour and unrelated images whose every probe-read attribute is unchanged.

    python bench/plain_edit_unseen.py [--cases triangle,hokusai+klimt] [--prompts 12] [--seeds 2] [--without-mining]
        [--model toyworld-mmdit] [--methods locoedit,uce-context]

"mining" is ``--preserve-nearest`` (the default, or ``off`` with ``--without-mining``: the edit before mining).
``--methods``: the edit methods compared on the same images before the edit (a row each); ``uce-context`` is the
SD3/FLUX baseline `locoedit context-edit` (``context_embedder`` alone), for ``--model toyworld-mmdit``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

torch.set_num_threads(1)

from locoedit.edit import ContextEmbedderRequest, EditRequest, compute_edit  # noqa: E402
from locoedit.models import load_adapter  # noqa: E402
from locoedit.toyworld import caption_for, load_vocab, parse_caption  # noqa: E402
from locoedit.toyworld.probe import ToyworldProbe  # noqa: E402

VOCAB = load_vocab()
# (attribute, value, --concept, --target, --kind): none of these is the subject of a shipped suite's edit except the
# style of the demo's neighbours; the captions below are drawn fresh.
CASES = [
    ("shape", "triangle", "triangle", "cross", "object"),
    ("shape", "square", "square", "circle", "object"),
    ("shape", "cross", "cross", "circle", "object"),
    ("color", "green", "green", "red", "object"),
    ("color", "blue", "blue", "yellow", "object"),
    ("texture", "dotted", "dotted", "striped", "object"),
    ("texture", "striped", "striped", "plain", "object"),
    ("style", "hokusai", "in the style of hokusai", "", "style"),
    ("style", "klimt", "in the style of klimt", "", "style"),
    ("style", "hokusai+klimt", "in the style of hokusai+in the style of klimt", "", "style"),
    ("fact", "the sun", "the sun", "a square", "fact"),
    ("fact", "the flag", "the flag", "a blue square", "fact"),
    ("fact", "the ocean", "the ocean", "a yellow dotted circle", "fact"),
    ("fact", "the forest", "the forest", "a blue dotted triangle", "fact"),
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


def lookalikes(attribute: str, value: str, rng, count: int) -> list[str]:
    """Captions entangled with the concept: a fact's look said in words, or the facts whose look carries the value."""
    if attribute == "fact":
        return [caption_for({**VOCAB.facts[value], **background(rng)}) for _ in range(count)]
    carriers = [fact for fact, look in VOCAB.facts.items() if look.get(attribute) == value]
    return [caption_for(fact_scene(rng, rng.choice(carriers))) for _ in range(count)] if carriers else []


def background(rng) -> dict[str, str]:
    return {"background": rng.choice(VALUES["background"])} if rng.random() < 0.7 else {}


def shows_concept(seen: dict[str, str], attribute: str, value: str) -> bool:
    if attribute == "fact":
        return all(seen[a] == v for a, v in VOCAB.facts[value].items())
    return any(seen[attribute] == v for v in value.split("+"))


def adopts(seen: dict[str, str], target: str) -> bool:
    stated = {a: v for a, v in parse_caption(target).items() if a != "fact"}
    return all(seen.get(a) == v for a, v in stated.items())


def follows(seen: dict[str, str], caption: str) -> bool:
    return all(seen.get(a) == v for a, v in parse_caption(caption).items() if a in seen)


def kept(before, after, rows) -> float:
    return np.mean([follows(a, p) for a, (p, _) in zip(after, rows)]) / np.mean(
        [follows(b, p) for b, (p, _) in zip(before, rows)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(case[1] for case in CASES))
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=None, help="--threshold of the edit (default: the edit's)")
    parser.add_argument(
        "--without-mining",
        action="store_true",
        help="also the same edit with --preserve-nearest 0, on the same images before the edit (a row each)",
    )
    parser.add_argument("--model", default="toyworld", choices=("toyworld", "toyworld-mmdit"))
    parser.add_argument("--methods", default="locoedit", help="comma-separated: locoedit, uce-context")
    args = parser.parse_args()
    adapter = load_adapter(args.model, device="cpu")
    probe = ToyworldProbe.load()
    settings = adapter.settings()
    seeds = list(range(args.seeds))
    wanted = args.cases.split(",")
    print(
        "| edit | mining | layers | efficacy | target adoption | neighbours kept | unrelated kept | look-alikes kept "
        "| identity | time |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for attribute, value, concept, target, kind in (c for c in CASES if c[1] in wanted):
        started = time.perf_counter()
        fields = dict(model=args.model, concepts=tuple(concept.split("+")), targets=(target,), kind=kind)
        request = EditRequest(**fields)
        if args.threshold is not None:
            request = replace(request, auto_threshold=args.threshold)
        variants: dict[str, EditRequest] = {}
        for method in args.methods.split(","):
            if method == "locoedit":
                variants[f"{request.preserve_nearest}"] = request
                if args.without_mining:
                    variants["off"] = replace(request, preserve_nearest=0)
            elif method == "uce-context":
                variants["uce-context"] = ContextEmbedderRequest(**fields)
            else:
                parser.error(f"--methods: {method!r} is not locoedit or uce-context")
        deltas = {name: compute_edit(adapter, r) for name, r in variants.items()}
        rng = np.random.default_rng(5)
        first = value.split("+")[0]
        groups = captions(attribute, first, rng, args.prompts)
        if "+" in value:  # several at once: the concept captions show any of them; neighbours none of them
            groups["concept"] = [
                caption_for(scene(rng, style=v)) for v in value.split("+") for _ in range(args.prompts)
            ]
            others = [v for v in VALUES["style"] if v not in value.split("+")]
            groups["neighbours"] = [caption_for(scene(rng, style=rng.choice(others))) for _ in range(args.prompts)]
        groups["lookalikes"] = lookalikes(attribute, first, rng, args.prompts)
        figures: dict[str, dict[str, float | None]] = {n: {"adoption": None, "lookalikes": None} for n in deltas}
        identity: dict[str, list[bool]] = {n: [] for n in deltas}
        for group, prompts in groups.items():
            if not prompts:
                continue
            rows = [(p, s) for p in prompts for s in seeds]
            encoded = adapter.encode([p for p, _ in rows])
            before = probe.predict(adapter.generate(encoded, [s for _, s in rows], settings))
            for name, delta in deltas.items():
                after = probe.predict(adapter.generate(encoded, [s for _, s in rows], settings, [delta]))
                if group == "concept":
                    figures[name]["efficacy"] = np.mean([not shows_concept(a, attribute, value) for a in after])
                    if target:
                        figures[name]["adoption"] = np.mean([adopts(a, target) for a in after])
                else:
                    figures[name][group] = kept(before, after, rows)
                    if group != "lookalikes":
                        identity[name] += [a == b for a, b in zip(after, before)]
        shown = f"{concept} -> {target!r}" if target else f"remove {concept!r}"
        cell = lambda v: "n/a" if v is None else f"{v:.0%}"
        for name, delta in deltas.items():
            layers = [layer["index"] for layer in delta.layers]
            where = f"{layers[0]}-{layers[-1]}" if layers else "context_embedder"
            row = figures[name]
            print(
                f"| {kind} {shown.replace('+', ' + ')} | {name} | {where} | {cell(row['efficacy'])} | "
                f"{cell(row['adoption'])} | {cell(row['neighbours'])} | {cell(row['unrelated'])} | "
                f"{cell(row['lookalikes'])} | {np.mean(identity[name]):.0%} | {time.perf_counter() - started:.0f} s |",
                flush=True,
            )


if __name__ == "__main__":
    main()
