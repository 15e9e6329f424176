"""The neuron-level edit against LocoEdit's closed form, on the same layers, prompts and rows (toy world).

For each case (the demo's style and object, on the layers the demo localizes them to): the closed form, the neuron
edit at each ``--shares`` value of its count rule (``--contribution-share``) and with a fixed ``--top-k 8``, each
evaluated on the case's suite (test split, ``--seeds`` seeds per prompt) against the same images before the edit,
read by the probe. Prints a Markdown table: neurons replaced, efficacy, generalization, specificity, identity.

    python bench/neurons_vs_closed_form.py [--seeds 8] [--shares 0.4,0.5,0.8] [--cases style,object]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

torch.set_num_threads(2)

from locoedit.edit import EditRequest, NeuronRequest, compute_edit  # noqa: E402
from locoedit.edit.common import with_model_defaults  # noqa: E402
from locoedit.evaluate import EvaluationSuite, evaluate  # noqa: E402
from locoedit.models import load_adapter  # noqa: E402
from locoedit.scoring import make_scorer, scorer_spec_for  # noqa: E402

# case -> (concepts, targets, kind, layers: those `locoedit demo` localizes it to, suite)
CASES = {
    "style": (("in the style of kandinsky",), ("",), "style", (2, 3, 4, 5, 6), "toyworld-style-kandinsky"),
    "object": (("circle",), ("square",), "object", (2, 3), "toyworld-object-circle"),
}


def variants(adapter, case: str, shares: list[float]) -> dict:
    concepts, targets, kind, layers, _ = CASES[case]
    request = EditRequest(model="toyworld", concepts=concepts, targets=targets, kind=kind, layers=layers)
    request = with_model_defaults(request, adapter)
    neurons = NeuronRequest(
        model="toyworld",
        concepts=concepts,
        neutral=tuple(p.target_prompt for p in request.pairs() if p.target_prompt),  # as the demo's neuron edit
        kind=kind,
        prompts=request.prompts,
        layers=layers,
        token=request.token,
    )
    found = {"closed form": compute_edit(adapter, request)}
    for share in shares:
        found[f"neurons, share {share}"] = compute_edit(adapter, replace(neurons, contribution_share=share))
    found["neurons, top 8"] = compute_edit(adapter, replace(neurons, top_k=8))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--shares", default="0.4,0.5,0.8")
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    adapter = load_adapter("toyworld", device="cpu")
    scorer = make_scorer(scorer_spec_for(adapter))
    print("| case | edit | layers | neurons | efficacy | generalization | specificity | identity |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        layers, suite_name = CASES[case][3], CASES[case][4]
        suite = replace(EvaluationSuite.load(suite_name).split("test"), seeds=tuple(range(args.seeds)))
        unedited = None
        for name, delta in variants(adapter, case, [float(s) for s in args.shares.split(",")]).items():
            result = evaluate(adapter, delta, suite, scorer, reuse=unedited)
            unedited = unedited or result
            chosen = delta.settings.get("chosen_neurons")
            count = sum(len(item["neurons"]) for item in chosen) if chosen else "-"
            h = result.headline
            print(
                f"| {case} | {name} | {layers[0]}-{layers[-1]} | {count} | {h.efficacy:.0%} | {h.generalization:.0%} "
                f"| {h.specificity:.0%} | {h.identity:.0%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
