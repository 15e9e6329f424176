"""How well one matrix can map a joint block's concept rows onto the target's: why LocoEdit on SD3-style blocks
falls short of LocoGen's routing.

A joint block's text rows change at every denoising step (the timestep modulation of ``norm1_context`` and the
image the stream reads), while an edit of ``add_k_proj`` is one matrix for all steps. For the demo's style (remove
"in the style of kandinsky", the toy MMDiT's templates and from-concept rows, two capture seeds x 20 steps) this
prints, per block, the residual of the closed form (no preservation) relative to the unedited residual
``||(X_t - X_o) W^T||``: one matrix fitted to every step's rows, and one fitted to a single step's rows (the mean over
steps 0, 5, ..., 35 of the 40 captured samples).

    python bench/joint_row_fit.py [--lambda 0.001]
"""

from __future__ import annotations

import argparse

import torch

torch.set_num_threads(1)

from locoedit.edit import EditRequest  # noqa: E402
from locoedit.edit.closed_form import Regulariser, closed_form_edit  # noqa: E402
from locoedit.edit.common import with_model_defaults  # noqa: E402
from locoedit.edit.key_value import build_rows  # noqa: E402
from locoedit.models import load_adapter  # noqa: E402


def relative_residual(weight, sources, targets, lam: float) -> float:
    new = closed_form_edit(weight, sources, targets, Regulariser(lam))
    return float((sources @ new.T - targets @ weight.T).norm() / ((targets - sources) @ weight.T).norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lambda", dest="lam", type=float, default=1e-3)
    args = parser.parse_args()
    adapter = load_adapter("toyworld-mmdit", device="cpu")
    request = EditRequest(
        model="toyworld-mmdit",
        concepts=("in the style of kandinsky",),
        targets=("",),
        kind="style",
        layers=(0,),
        preserve_nearest=0,
    )
    rows = build_rows(adapter, with_model_defaults(request, adapter))
    print(f"{len(rows.concept)} concept rows, each captured {rows.concept.samples} times (seeds x steps)")
    print("| block | one matrix, every step | one matrix per step (mean) |")
    print("|---|---|---|")
    for layer in adapter.layers:
        weight = layer.module.add_k_proj.weight.detach().double()
        concept, target = rows.concept.per_step(layer), rows.target.per_step(layer)  # [rows, samples, dim]
        every = relative_residual(weight, concept.flatten(0, 1), target.flatten(0, 1), args.lam * rows.concept.samples)
        steps = range(0, concept.shape[1], 5)
        per_step = sum(relative_residual(weight, concept[:, s], target[:, s], args.lam) for s in steps) / len(steps)
        print(f"| {layer.index} | {every:.1%} | {per_step:.1%} |")


if __name__ == "__main__":
    main()
