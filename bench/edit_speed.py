"""Time LocoEdit on all key/value matrices of the real-size SD-XL UNet (random weights) against the official formula.

    python bench/edit_speed.py [--rows 8] [--lam 0.1] [--threads 1] [--official-limit N]

The layer table comes from SD-XL's UNet config instantiated on the ``meta`` device (70 cross-attention layers,
140 ``to_k``/``to_v`` matrices of 640 or 1280 x 2048); each matrix gets seeded random float32 weights. The text rows
are random float32 rows of width 2048 (``--rows`` concept rows, targets = concept rows + noise), shared by all
layers as SD-XL's are. Both methods minimise the same objective per matrix:

    ||X_o W_new^T - X_t W^T||^2 + lam ||W_new - W||^2

locoedit: ``locoedit.edit.edit_matrix`` (float64, n x n solve, one reused float64 buffer), rounded to float32; and
``locoedit.edit.closed_form.edit_factors``, the same edit as the factors a delta stores (no [out, in] matrix made).
official: ``(lam W + W X_t^T X_o) @ torch.inverse(lam I + X_o^T X_o)`` in float32, per matrix, as the paper's code.

With preservation (``--preserve-rows`` random rows standing for a corpus's statistics, computed before the clock
starts, as ``locoedit stats`` does): ``edit_factors`` with ``A = C + lam I``, one Cholesky factorisation per input
space and lambda (keys and values share it at equal lambdas, as in ``compute_edit``), timed side by side with the
plain edit.

Prints the times and the objectives (summed over matrices, evaluated in float64). Not a timed test.
"""

from __future__ import annotations

import argparse
import time

import torch

from locoedit.core.lowrank import Workspace
from locoedit.edit.closed_form import Regulariser, closed_form_edit, edit_factors, edit_matrix, edit_objective
from locoedit.models.layers import list_cross_attention_layers
from locoedit.models.real_configs import SDXL_UNET


def sdxl_shapes() -> list[tuple[str, tuple[int, int]]]:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SDXL_UNET)
    layers = list_cross_attention_layers(unet)
    return [
        (f"{layer.name}.{p}.weight", tuple(getattr(layer.module, p).weight.shape))
        for layer in layers
        for p in layer.edit_projections
    ]


def official_edit(weight: torch.Tensor, sources: torch.Tensor, targets: torch.Tensor, lam: float) -> torch.Tensor:
    """The paper's float32 expression with an explicit inverse (for comparison only; locoedit never does this)."""
    identity = torch.eye(weight.shape[1], dtype=weight.dtype)
    numerator = lam * weight + weight @ targets.T @ sources  # [out, in]
    return numerator @ torch.inverse(lam * identity + sources.T @ sources)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8, help="concept rows (e.g. 4 templates x 2 concepts)")
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preserve-rows", type=int, default=8192, help="rows behind the preservation statistics")
    parser.add_argument("--official-limit", type=int, default=None, help="time the official formula on N matrices only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    shapes = sdxl_shapes()
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(shape, generator=generator) / shape[1] ** 0.5 for _, shape in shapes]
    inputs = shapes[0][1][1]
    sources = torch.randn(args.rows, inputs, generator=generator)  # [n, 2048] float32, like CLIP states
    targets = sources + 0.5 * torch.randn(args.rows, inputs, generator=generator)

    workspace = Workspace()
    start = time.perf_counter()
    ours = [edit_matrix(w, sources, targets, args.lam, name, workspace)[0] for (name, _), w in zip(shapes, weights)]
    ours_s = time.perf_counter() - start
    # The same edit written into memory that is already mapped (as when the result overwrites a buffer or the
    # model): what remains is the algorithm, without the kernel's first-touch cost of 1.4 GB of new pages.
    start = time.perf_counter()
    for (name, _), w, out in zip(shapes, weights, ours):
        edit_matrix(w, sources, targets, args.lam, name, workspace, out=out)
    ours_reused_s = time.perf_counter() - start
    # What a delta stores: the factors U [out, n] and V [n, in] of each update, no new matrix at all.
    start = time.perf_counter()
    factored = [edit_factors(w, sources, targets, args.lam, workspace) for w in weights]
    factors_s = time.perf_counter() - start
    factored_objective = sum(objective for _, objective in factored)
    # With preservation: C from a corpus's rows is precomputed (locoedit stats); the factorisations are timed.
    corpus = torch.randn(args.preserve_rows, inputs, generator=generator, dtype=torch.float64)
    moment = corpus.T @ corpus / args.preserve_rows
    start = time.perf_counter()
    regularisers = {}  # one per lambda, as compute_edit keeps them (keys and values share it at equal lambdas)
    preserved = [
        edit_factors(w, sources, targets, regularisers.setdefault(args.lam, Regulariser(args.lam, moment)), workspace)
        for w in weights
    ]
    preserved_s = time.perf_counter() - start
    ranks = {update.rank for update, _ in preserved}
    # The floor for any method that returns new matrices: allocate and fill 140 new ones.
    start = time.perf_counter()
    copies = [torch.empty_like(w).copy_(w) for w in weights]
    floor_s = time.perf_counter() - start
    del copies

    limit = len(shapes) if args.official_limit is None else min(args.official_limit, len(shapes))
    start = time.perf_counter()
    theirs = [official_edit(w, sources, targets, args.lam) for w in weights[:limit]]
    theirs_s = time.perf_counter() - start

    ours_objective = sum(edit_objective(w, n, sources, targets, args.lam) for w, n in zip(weights[:limit], ours))
    theirs_objective = sum(edit_objective(w, n, sources, targets, args.lam) for w, n in zip(weights[:limit], theirs))
    exact = sum(
        edit_objective(w, closed_form_edit(w, sources, targets, args.lam), sources, targets, args.lam)
        for w in weights[:limit]
    )
    print(
        f"SD-XL layout: {len(shapes) // 2} cross-attention layers, {len(shapes)} key/value matrices, "
        f"{args.rows} concept rows, lambda {args.lam}, {args.threads} thread(s)"
    )
    print(f"locoedit (float64 n x n solve, float32 result): {ours_s:8.3f} s for {len(shapes)} matrices (new memory)")
    print(f"locoedit, into already-mapped output memory:    {ours_reused_s:8.3f} s for {len(shapes)} matrices")
    print(
        f"locoedit, factors only (what a delta stores):  {factors_s:8.3f} s for {len(shapes)} matrices "
        f"(objective {factored_objective:.6e})"
    )
    print(
        f"locoedit, factors with preservation (C + lam I): {preserved_s:8.3f} s for {len(shapes)} matrices "
        f"(rank {sorted(ranks)}; plain factors / preserving: {factors_s / preserved_s:.2f})"
    )
    print(f"floor: allocate and copy {len(shapes)} new matrices: {floor_s:8.3f} s")
    print(
        f"official (float32 explicit inverse):            {theirs_s:8.3f} s for {limit} matrices"
        + ("" if limit == len(shapes) else f" (~{theirs_s * len(shapes) / limit:.1f} s for all, extrapolated)")
    )
    print(
        f"objective over {limit} matrices: locoedit {ours_objective:.6e}, official {theirs_objective:.6e}, "
        f"exact float64 optimum {exact:.6e}"
    )
    print(
        f"official / locoedit objective: {theirs_objective / ours_objective:.4f}; "
        f"locoedit / optimum: {ours_objective / exact:.9f}"
    )


if __name__ == "__main__":
    main()
