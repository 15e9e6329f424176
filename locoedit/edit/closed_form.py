"""The closed form of LocoEdit, in a few lines of linear algebra and no model code.

For an edited projection ``W`` [out, in], concept rows ``X_o`` [n, in] and aligned target rows ``X_t`` [n, in]:

    W_new = argmin ||X_o W_new^T - X_t W^T||^2 + lambda ||W_new - W||^2
          = (W X_t^T X_o + lambda W)(X_o^T X_o + lambda I)^{-1}

solved in float64 whatever the model's dtype, by a linear solve (never an explicit inverse).
"""

from __future__ import annotations

import torch

from locoedit.core.lowrank import LowRank, Workspace, add_low_rank, rows_per_block, to_model_dtype


def closed_form_edit(
    weight: torch.Tensor,  # [out, in] W
    sources: torch.Tensor,  # [n, in] X_o: rows whose outputs should change
    targets: torch.Tensor,  # [n, in] X_t: rows whose current outputs X_t W^T the sources should produce
    lam: float,
) -> torch.Tensor:  # [out, in] W_new, float64
    """W_new = argmin ||X_o W_new^T - X_t W^T||^2 + lam ||W_new - W||^2 = (W X_t^T X_o + lam W)(X_o^T X_o + lam I)^{-1}.

    Written as W_new = W + Delta with Delta (X_o^T X_o + lam I) = R^T X_o and R = (X_t - X_o) W^T [n, out], the
    residual of the outputs. With fewer rows than inputs (n < in), the push-through (Woodbury) identity
    X_o (X_o^T X_o + lam I_in)^{-1} = (X_o X_o^T + lam I_n)^{-1} X_o gives Delta = S^T X_o with
    S = (X_o X_o^T + lam I_n)^{-1} R, an n x n solve; otherwise the in x in system is solved. Both exact, float64.
    """
    w = weight.detach().to(torch.float64)
    x_o = sources.to(device=w.device, dtype=torch.float64)
    x_t = targets.to(device=w.device, dtype=torch.float64)
    n, inputs = x_o.shape
    if n < inputs:
        solved = _row_space_update(w, x_o, x_t, lam)  # [n, out]
        return torch.addmm(w, solved.T, x_o)  # [out, in]
    residual = (x_t - x_o) @ w.T  # [n, out]
    system = x_o.T @ x_o + lam * torch.eye(inputs, dtype=torch.float64, device=w.device)  # [in, in]
    update_t = torch.linalg.solve(system, x_o.T @ residual)  # [in, out] = Delta^T (the system is symmetric)
    return w + update_t.T


def _row_space_update(
    w: torch.Tensor,  # [out, in] float64
    x_o: torch.Tensor,  # [n, in] float64
    x_t: torch.Tensor,  # [n, in] float64
    lam: float,
) -> torch.Tensor:  # S [n, out] with W_new = W + S^T X_o
    """S = (X_o X_o^T + lam I_n)^{-1} R, R = (X_t - X_o) W^T, by a linear solve.

    Every output row of W is handled independently (column j of S depends on row j of W only), which is what lets
    :func:`edit_matrix` work through a large matrix in cache-sized blocks of rows."""
    n = x_o.shape[0]
    gram = x_o @ x_o.T  # [n, n]
    residual = (x_t - x_o) @ w.T  # [n, out]
    return torch.linalg.solve(gram + lam * torch.eye(n, dtype=gram.dtype, device=gram.device), residual)


def edit_factors(
    weight: torch.Tensor,  # [out, in] W, any float dtype
    sources: torch.Tensor,  # [n, in] X_o, n < in
    targets: torch.Tensor,  # [n, in] X_t
    lam: float,
    workspace: Workspace | None = None,
) -> tuple[LowRank, float]:  # W_new - W = U V with U = S^T [out, n], V = X_o [n, in], float64; the objective
    """The exact update of :func:`closed_form_edit` as factors, for n < in: ``W_new = W + S^T X_o``, rank <= n.

    S = (X_o X_o^T + lam I_n)^{-1} (X_t - X_o) W^T needs W only through the residual, computed in float64 one
    cache-sized block of output rows at a time (no float64 copy of W, no new [out, in] matrix).
    """
    x_o = sources.to(device=weight.device, dtype=torch.float64)
    x_t = targets.to(device=weight.device, dtype=torch.float64)
    n, in_features = x_o.shape
    if n >= in_features:
        raise ValueError(f"edit_factors needs fewer rows than inputs (got {n} rows of width {in_features})")
    weight = weight.detach()
    out_features = weight.shape[0]
    workspace = workspace or Workspace()
    difference = x_t - x_o  # [n, in]
    residual = torch.empty(n, out_features, dtype=torch.float64, device=weight.device)  # R = (X_t - X_o) W^T
    step = rows_per_block(weight.shape)
    for start in range(0, out_features, step):
        rows = slice(start, min(start + step, out_features))
        block = workspace.block(rows.stop - rows.start, in_features, weight.device)
        residual[:, rows] = difference @ block.copy_(weight[rows]).T
    # The algebra of _row_space_update, on all output rows at once.
    gram = x_o @ x_o.T  # [n, n]
    solved = torch.linalg.solve(gram + lam * torch.eye(n, dtype=gram.dtype, device=gram.device), residual)  # S
    objective = float(((gram @ solved - residual) ** 2).sum() + lam * ((solved @ solved.T) * gram).sum())
    return LowRank(solved.T.contiguous(), x_o.clone()), objective  # its own V: a file stores each tensor once


def edit_matrix(
    weight: torch.Tensor,  # [out, in] W, any float dtype
    sources: torch.Tensor,  # [n, in] X_o
    targets: torch.Tensor,  # [n, in] X_t
    lam: float,
    name: str = "weight",
    workspace: Workspace | None = None,
    out: torch.Tensor | None = None,  # [out, in] contiguous, W's dtype: write the result here instead of new memory
) -> tuple[torch.Tensor, float]:  # W_new in W's dtype, and the (float64) objective at the unrounded W_new
    """:func:`closed_form_edit`, rounded once to W's dtype, as a dense matrix.

    With n < in, the factors of :func:`edit_factors` added to W by :func:`~locoedit.core.lowrank.add_low_rank`
    (the same code that applies a stored delta, so both give the same bits). An entry beyond the dtype's range is
    refused, never turned into inf.
    """
    if sources.shape[0] >= sources.shape[1]:
        x_o = sources.to(device=weight.device, dtype=torch.float64)
        x_t = targets.to(device=weight.device, dtype=torch.float64)
        new = closed_form_edit(weight, x_o, x_t, lam)
        return to_model_dtype(new, weight, name), edit_objective(weight, new, x_o, x_t, lam)
    workspace = workspace or Workspace()
    update, objective = edit_factors(weight, sources, targets, lam, workspace)
    return add_low_rank(weight, update, name, out=out, workspace=workspace), objective


def edit_objective(weight, new_weight, sources, targets, lam: float) -> float:
    """||X_o W_new^T - X_t W^T||^2 + lam ||W_new - W||^2, in float64."""
    w, w_new = weight.detach().double(), new_weight.detach().double()
    x_o, x_t = sources.detach().double(), targets.detach().double()
    return float(((x_o @ w_new.T - x_t @ w.T) ** 2).sum() + lam * ((w_new - w) ** 2).sum())
