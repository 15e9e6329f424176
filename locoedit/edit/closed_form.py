"""The closed form of LocoEdit, in a few lines of linear algebra and no model code.

For an edited projection ``W`` [out, in], concept rows ``X_o`` [n, in] and aligned target rows ``X_t`` [n, in]:

    W_new = argmin ||X_o W_new^T - X_t W^T||^2 + lambda ||W_new - W||^2
          = (W X_t^T X_o + lambda W)(X_o^T X_o + lambda I)^{-1}

solved in float64 whatever the model's dtype, by a linear solve (never an explicit inverse).
"""

from __future__ import annotations

import torch

from locoedit.core.errors import LocoeditError


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
        solved, _ = _row_space_update(w, x_o, x_t, lam)  # [n, out]
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
) -> tuple[torch.Tensor, float]:  # S [n, out] with W_new = W + S^T X_o; and the objective at W_new
    """S = (X_o X_o^T + lam I_n)^{-1} R, R = (X_t - X_o) W^T, by a linear solve; the objective from the factors:
    X_o W_new^T - X_t W^T = G S - R and ||W_new - W||^2 = <S S^T, G>, with G = X_o X_o^T.

    Every output row of W is handled independently (column j of S depends on row j of W only), which is what lets
    :func:`edit_matrix` work through a large matrix in cache-sized blocks of rows."""
    n = x_o.shape[0]
    gram = x_o @ x_o.T  # [n, n]
    residual = (x_t - x_o) @ w.T  # [n, out]
    solved = torch.linalg.solve(gram + lam * torch.eye(n, dtype=gram.dtype, device=gram.device), residual)
    objective = ((gram @ solved - residual) ** 2).sum() + lam * ((solved @ solved.T) * gram).sum()
    return solved, float(objective)


class Workspace:
    """A reusable float64 buffer, so that editing many large matrices allocates no fresh memory per block."""

    def __init__(self):
        self._buffer = torch.empty(0, dtype=torch.float64)

    def block(self, rows: int, columns: int, device: torch.device) -> torch.Tensor:  # [rows, columns] float64
        size = rows * columns
        if self._buffer.numel() < size or self._buffer.device != device:
            self._buffer = torch.empty(size, dtype=torch.float64, device=device)
        return self._buffer[:size].view(rows, columns)


_BLOCK_BYTES = 1 << 22  # float64 rows per block: about 4 MiB, so a block stays in cache


def edit_matrix(
    weight: torch.Tensor,  # [out, in] W, any float dtype
    sources: torch.Tensor,  # [n, in] X_o
    targets: torch.Tensor,  # [n, in] X_t
    lam: float,
    name: str = "weight",
    workspace: Workspace | None = None,
    out: torch.Tensor | None = None,  # [out, in] contiguous, W's dtype: write the result here instead of new memory
) -> tuple[torch.Tensor, float]:  # W_new in W's dtype, and the (float64) objective at the unrounded W_new
    """:func:`closed_form_edit`, rounded once to W's dtype: the path used on real models.

    With n < in, W_new = W + S^T X_o with S from the n x n solve, computed in float64 one block of output rows at a
    time (each block: widen to float64, residual, solve, update, round), so the matrix is read and written once.
    Rounding is checked: an entry beyond the dtype's range is refused, never turned into inf.
    """
    x_o = sources.to(device=weight.device, dtype=torch.float64)
    x_t = targets.to(device=weight.device, dtype=torch.float64)
    if x_o.shape[0] >= x_o.shape[1]:
        new = closed_form_edit(weight, x_o, x_t, lam)
        return to_model_dtype(new, weight, name), edit_objective(weight, new, x_o, x_t, lam)
    weight = weight.detach()
    out_features, in_features = weight.shape
    rows_per_block = max(1, min(out_features, _BLOCK_BYTES // (8 * in_features)))
    workspace = workspace or Workspace()
    if out is not None and (out.shape != weight.shape or out.dtype != weight.dtype or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous {weight.dtype} tensor of shape {tuple(weight.shape)}")
    result = torch.empty_like(weight, memory_format=torch.contiguous_format) if out is None else out
    limit = torch.finfo(weight.dtype).max
    # The algebra of _row_space_update, with the n x n system factored once for all blocks.
    n = x_o.shape[0]
    gram = x_o @ x_o.T  # [n, n]
    factors, pivots = torch.linalg.lu_factor(gram + lam * torch.eye(n, dtype=gram.dtype, device=gram.device))
    difference = x_t - x_o  # [n, in]
    objective = 0.0
    for start in range(0, out_features, rows_per_block):
        rows = slice(start, min(start + rows_per_block, out_features))
        block = workspace.block(rows.stop - rows.start, in_features, weight.device)
        block.copy_(weight[rows])  # [rows, in] float64
        residual = difference @ block.T  # [n, rows]
        solved = torch.linalg.lu_solve(factors, pivots, residual)  # [n, rows], S for these rows
        objective += float(((gram @ solved - residual) ** 2).sum() + lam * ((solved @ solved.T) * gram).sum())
        block.addmm_(solved.T, x_o)  # W + S^T X_o for these rows, in place
        low, high = torch.aminmax(block)
        if not (torch.isfinite(low) and torch.isfinite(high) and -low <= limit and high <= limit):
            raise LocoeditError(
                f"{name}: the edited matrix has entries beyond what {weight.dtype} holds (max {limit:g}); raise the "
                "lambdas or edit the model in float32"
            )
        result[rows].copy_(block)
    return result, objective


def edit_objective(weight, new_weight, sources, targets, lam: float) -> float:
    """||X_o W_new^T - X_t W^T||^2 + lam ||W_new - W||^2, in float64."""
    w, w_new = weight.detach().double(), new_weight.detach().double()
    x_o, x_t = sources.detach().double(), targets.detach().double()
    return float(((x_o @ w_new.T - x_t @ w.T) ** 2).sum() + lam * ((w_new - w) ** 2).sum())


def to_model_dtype(new_weight: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    """Round a float64 result to the parameter's dtype; refuse values the dtype cannot hold."""
    limit = torch.finfo(like.dtype).max
    if not torch.isfinite(new_weight).all() or new_weight.abs().max() > limit:
        raise LocoeditError(
            f"{name}: the edited matrix has entries beyond what {like.dtype} holds (max {limit:g}); raise the lambdas "
            "or edit the model in float32"
        )
    return new_weight.to(like.dtype).contiguous()

