"""Causal tracing against LocoGen on the toy world's ground truth: where does each put a colour, a shape, a style and
a fact, and does editing the layers that tracing picks work as well as editing LocoGen's window?

For each case: LocoGen (windows of 3 cross-attention layers, the probe as scorer), causal tracing (the same prompts,
noise --noise x the token embeddings' std), then the same LocoEdit on LocoGen's window and on the window of 3
consecutive layers whose cross-attention outputs tracing rates highest, each evaluated with the case's shipped suite.

    python bench/trace_vs_locogen.py [--seeds 8] [--trace-seeds 4] [--noise 6] [--out runs/trace-vs-locogen]
"""

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from locoedit.core.io import write_json
from locoedit.edit import EditRequest, compute_edit
from locoedit.evaluate import EvaluationSuite, evaluate
from locoedit.localize import LocalizationRequest, localize
from locoedit.models import load_adapter
from locoedit.scoring import make_scorer
from locoedit.trace import TraceRequest, trace

logger = logging.getLogger("trace_vs_locogen")

DEMO = json.loads((Path(__file__).parents[1] / "locoedit" / "data" / "demo.json").read_text())
COLOUR = {
    "kind": "object",
    "suite": "toyworld-color-red",
    "concept": "red",
    "localize": {
        "prompts": [
            "a red circle on black",
            "a red square on white",
            "a red striped triangle on gray",
            "a red dotted cross",
        ],
        "targets": ["a circle on black", "a square on white", "a striped triangle on gray", "a dotted cross"],
    },
    "edit": {
        "concepts": ["red"],
        "targets": ["blue"],
        "prompts": [
            "a {c} circle on black",
            "a {c} square on white",
            "a {c} striped triangle on gray",
            "a {c} dotted cross",
            "a {c} shape",
            "a {c} circle in the style of hokusai",
        ],
        "preserve": ["a blue circle on black", "a green square on white", "the flag on gray", "a yellow triangle"],
        "token": "from-concept",
    },
}
CASES = [("colour", COLOUR)] + [(case["kind"], case) for case in DEMO["cases"]]


def best_window(values: list[float], size: int) -> list[int]:
    starts = range(len(values) - size + 1)
    start = max(starts, key=lambda s: sum(values[s : s + size]))
    return list(range(start, start + size))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=8, help="LocoGen and evaluation seeds")
    p.add_argument("--trace-seeds", type=int, default=4)
    p.add_argument("--noise", type=float, default=6.0)
    p.add_argument("--window", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/trace-vs-locogen")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    adapter = load_adapter("toyworld", device="cpu")
    scorer = make_scorer("toyworld")
    out = Path(args.out)
    rows = []
    for name, case in CASES:
        started = time.perf_counter()
        prompts, targets = tuple(case["localize"]["prompts"]), tuple(case["localize"]["targets"])
        located = localize(
            LocalizationRequest(
                model="toyworld",
                prompts=prompts,
                targets=targets,
                concept=case["concept"],
                scorer="toyworld",
                window=args.window,
                seeds=tuple(range(args.seeds)),
            ),
            out / name / "localize",
            adapter,
            scorer,
        )
        traced = trace(
            TraceRequest(
                model="toyworld",
                prompts=prompts,
                concept=case["concept"],
                scorer="toyworld",
                noise=args.noise,
                seeds=tuple(range(args.trace_seeds)),
            ),
            out / name / "trace",
            adapter,
            scorer,
        )
        effect = {s.name: s.effect for s in traced.sites}
        cross = [effect.get(f"unet.{layer.name}") or 0.0 for layer in adapter.layers]
        windows = {"LocoGen": located.chosen.layers, "tracing": best_window(cross, args.window)}
        edit = case["edit"]
        request = EditRequest(
            model="toyworld",
            concepts=tuple(edit["concepts"]),
            targets=tuple(edit["targets"]),
            kind=case["kind"],
            prompts=tuple(edit["prompts"]),
            preserve=tuple(edit["preserve"]),
            token=edit["token"],
            layers=(0,),
        )
        suite = EvaluationSuite.load(case["suite"])
        suite = type(suite)(**{**suite.__dict__, "seeds": tuple(range(args.seeds))})
        results, unedited = {}, None
        for method, layers in windows.items():
            delta = compute_edit(adapter, type(request)(**{**request.__dict__, "layers": tuple(layers)}))
            result = evaluate(adapter, delta, suite, scorer, out / name / f"edit-{method}", reuse=unedited)
            unedited = unedited or result
            results[method] = result.headline
        best_denoiser, best_encoder = traced.best("denoiser"), traced.best("text_encoder")
        row = {
            "case": name,
            "concept": case["concept"],
            "trace_gap": traced.gap,
            "locogen_window": windows["LocoGen"],
            "locogen_effect": located.chosen.effect,
            "traced_window": windows["tracing"],
            "traced_cross_attention_effects": cross,
            "best_denoiser_site": best_denoiser.name,
            "best_denoiser_effect": best_denoiser.effect,
            "best_text_encoder_site": best_encoder.name,
            "best_text_encoder_effect": best_encoder.effect,
            "edit": {
                m: {"efficacy": h.efficacy, "generalization": h.generalization, "specificity": h.specificity}
                for m, h in results.items()
            },
            "seconds": time.perf_counter() - started,
        }
        rows.append(row)
        logger.info("%s: %s", name, json.dumps(row))
    write_json(
        out / "comparison.json",
        {
            "format": "locoedit.trace-vs-locogen/1",
            "noise": args.noise,
            "seeds": args.seeds,
            "trace_seeds": args.trace_seeds,
            "rows": rows,
        },
    )
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    """The README's table. (The denoiser's strongest site is always its last block, which restores everything, so
    the table names the strongest cross-attention layer instead.)"""
    pct = lambda v: "n/a" if v is None else f"{100 * v:.0f}%"
    print(
        "| case | trace gap | LocoGen window (effect) | traced window | strongest cross-attention layer (trace) | "
        "strongest text-encoder site (trace) | edit at LocoGen's window: eff / gen / spec | edit at the traced window |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        e, cross = r["edit"], r["traced_cross_attention_effects"]
        strongest = max(range(len(cross)), key=lambda i: cross[i])
        cells = [
            " / ".join(pct(e[m][k]) for k in ("efficacy", "generalization", "specificity"))
            for m in ("LocoGen", "tracing")
        ]
        print(
            f"| {r['case']} ({r['concept']}) | {r['trace_gap']:.2f} | {r['locogen_window'][0]}-{r['locogen_window'][-1]} "
            f"({r['locogen_effect']:.2f}) | {r['traced_window'][0]}-{r['traced_window'][-1]} | {strongest} "
            f"({cross[strongest]:.2f}) | `{r['best_text_encoder_site'].removeprefix('text_encoder.')}` "
            f"({r['best_text_encoder_effect']:.2f}) | {cells[0]} | {cells[1]} |"
        )


if __name__ == "__main__":
    main()
