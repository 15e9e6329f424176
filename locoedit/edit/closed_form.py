"""The closed form of LocoEdit, in a few lines of linear algebra and no model code.

For an edited projection ``W`` [out, in], concept rows ``X_o`` [n, in], aligned target rows ``X_t`` [n, in] and a
preservation second moment ``C`` [in, in] (``sum_p x_p x_p^T`` over rows whose outputs should stay, MEMIT's "mom2"):

    W_new = argmin ||X_o W_new^T - X_t W^T||^2 + tr((W_new - W) C (W_new - W)^T) + lambda ||W_new - W||^2

With ``A = C + lambda I`` (a :class:`Regulariser`) and ``R = (X_t - X_o) W^T`` the update ``D = W_new - W`` solves
``D (X_o^T X_o + A) = R^T X_o``. The push-through identity ``X_o (X_o^T X_o + A)^{-1} = (I + X_o A^{-1} X_o^T)^{-1}
X_o A^{-1}`` gives ``D = S^T V`` with ``V = X_o A^{-1}`` [n, in] and ``S = (I_n + X_o V^T)^{-1} R`` [n, out]: rank
<= n whatever ``C`` is, one factorisation of ``A`` per input space and regulariser, and an n x n solve per matrix.
Everything is float64 whatever the model's dtype, by linear solves (never an explicit inverse).
"""

from __future__ import annotations

import torch

from locoedit.core.lowrank import (
    LowRank,
    Workspace,
    add_low_rank,
    rows_per_block,
    to_model_dtype,
)


class Regulariser:
    """``A = C + lambda I`` [in, in]: what keeps an edited matrix near its original, for every matrix that reads the
    same inputs. Factored (Cholesky) once, on first use per device, then shared."""

    def __init__(self, lam: float, second_moment: torch.Tensor | None = None):  # C [in, in], symmetric PSD
        self.lam = float(lam)
        self.second_moment = None if second_moment is None else second_moment.detach().to(torch.float64)
        self._cholesky: dict[torch.device, torch.Tensor] = {}
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (X_o, X_o A^{-1}) of the last call

    def matrix(self, size: int, device: torch.device) -> torch.Tensor:  # [in, in] float64
        identity = self.lam * torch.eye(size, dtype=torch.float64, device=device)
        return identity if self.second_moment is None else self.second_moment.to(device) + identity

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:  # [in, k] float64 -> A^{-1} rhs
        if self.second_moment is None:
            return rhs / self.lam
        if rhs.device not in self._cholesky:
            self._cholesky[rhs.device] = torch.linalg.cholesky(self.matrix(rhs.shape[0], rhs.device))
        return torch.cholesky_solve(rhs, self._cholesky[rhs.device])

    def rows_times_inverse(self, rows: torch.Tensor) -> torch.Tensor:  # [n, in] float64 -> X A^{-1}
        """``rows A^{-1}``; every matrix of a layer (and every layer of an input space) has the same concept rows, so
        the last answer is kept and returned again for equal rows."""
        if self._last is not None and self._last[0].shape == rows.shape and torch.equal(self._last[0], rows):
            return self._last[1]
        down = self.solve(rows.T).T
        self._last = (rows, down)
        return down


def as_regulariser(regulariser: Regulariser | float) -> Regulariser:
    """A plain ``lambda`` is the regulariser without preservation."""
    return regulariser if isinstance(regulariser, Regulariser) else Regulariser(regulariser)


def closed_form_edit(
    weight: torch.Tensor,  # [out, in] W
    sources: torch.Tensor,  # [n, in] X_o: rows whose outputs should change
    targets: torch.Tensor,  # [n, in] X_t: rows whose current outputs X_t W^T the sources should produce
    regulariser: Regulariser | float,
) -> torch.Tensor:  # [out, in] W_new, float64
    """W_new = W + D with D (X_o^T X_o + A) = R^T X_o, R = (X_t - X_o) W^T, as a dense float64 matrix.

    With fewer rows than inputs (n < in) through the factors ``S^T V`` (an n x n solve); otherwise the in x in system
    is solved directly. Both exact."""
    regulariser = as_regulariser(regulariser)
    w = weight.detach().to(torch.float64)
    x_o = sources.to(device=w.device, dtype=torch.float64)
    x_t = targets.to(device=w.device, dtype=torch.float64)
    n, inputs = x_o.shape
    residual = (x_t - x_o) @ w.T  # [n, out]
    if n < inputs:
        solved, down, _ = _row_space_update(x_o, residual, regulariser)
        return torch.addmm(w, solved.T, down)  # [out, in]
    system = x_o.T @ x_o + regulariser.matrix(inputs, w.device)  # [in, in], symmetric
    update_t = torch.linalg.solve(system, x_o.T @ residual)  # [in, out] = D^T
    return w + update_t.T


def _row_space_update(
    x_o: torch.Tensor,  # [n, in] float64
    residual: torch.Tensor,  # [n, out] R = (X_t - X_o) W^T, float64
    regulariser: Regulariser,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # S [n, out], V [n, in], G [n, n]
    """The factors of D = S^T V: V = X_o A^{-1}, G = X_o A^{-1} X_o^T and S = (I_n + G)^{-1} R.

    Column j of S depends on row j of W only (through R), which is what lets :func:`edit_factors` compute R in
    cache-sized blocks of W's rows."""
    down = regulariser.rows_times_inverse(x_o)  # [n, in]
    gram = x_o @ down.T  # [n, n]
    gram = (gram + gram.T) / 2  # symmetric up to round-off
    identity = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(identity + gram, residual), down, gram


def edit_factors(
    weight: torch.Tensor,  # [out, in] W, any float dtype
    sources: torch.Tensor,  # [n, in] X_o, n < in
    targets: torch.Tensor,  # [n, in] X_t
    regulariser: Regulariser | float,
    workspace: Workspace | None = None,
) -> tuple[LowRank, float]:  # W_new - W = U V with U = S^T [out, n], V = X_o A^{-1} [n, in], float64; the objective
    """The exact update of :func:`closed_form_edit` as factors, for n < in: ``W_new = W + S^T V``, rank <= n.

    W enters only through the residual R = (X_t - X_o) W^T, computed in float64 one cache-sized block of output rows
    at a time (no float64 copy of W, no new [out, in] matrix).
    """
    regulariser = as_regulariser(regulariser)
    x_o = sources.to(device=weight.device, dtype=torch.float64)
    x_t = targets.to(device=weight.device, dtype=torch.float64)
    n, in_features = x_o.shape
    if n >= in_features:
        raise ValueError(f"edit_factors needs fewer rows than inputs (got {n} rows of width {in_features})")
    weight = weight.detach()
    out_features = weight.shape[0]
    workspace = workspace or Workspace()
    difference = x_t - x_o  # [n, in]
    residual = torch.empty(n, out_features, dtype=torch.float64, device=weight.device)
    step = rows_per_block(weight.shape)
    for start in range(0, out_features, step):
        rows = slice(start, min(start + step, out_features))
        block = workspace.block(rows.stop - rows.start, in_features, weight.device)
        residual[:, rows] = difference @ block.copy_(weight[rows]).T
    solved, down, gram = _row_space_update(x_o, residual, regulariser)
    # X_o D^T = G S, and tr(D A D^T) = tr(S^T V A V^T S) = tr(S^T G S).
    objective = float(((gram @ solved - residual) ** 2).sum() + ((solved @ solved.T) * gram).sum())
    return LowRank(solved.T.contiguous(), down.clone()), objective  # its own V: a file stores each tensor once


def edit_matrix(
    weight: torch.Tensor,  # [out, in] W, any float dtype
    sources: torch.Tensor,  # [n, in] X_o
    targets: torch.Tensor,  # [n, in] X_t
    regulariser: Regulariser | float,
    name: str = "weight",
    workspace: Workspace | None = None,
    out: torch.Tensor | None = None,  # [out, in] contiguous, W's dtype: write the result here instead of new memory
) -> tuple[torch.Tensor, float]:  # W_new in W's dtype, and the (float64) objective at the unrounded W_new
    """:func:`closed_form_edit`, rounded once to W's dtype, as a dense matrix.

    With n < in, the factors of :func:`edit_factors` added to W by :func:`~locoedit.core.lowrank.add_low_rank`
    (the same code that applies a stored delta, so both give the same bits). An entry beyond the dtype's range is
    refused, never turned into inf.
    """
    regulariser = as_regulariser(regulariser)
    if sources.shape[0] >= sources.shape[1]:
        x_o = sources.to(device=weight.device, dtype=torch.float64)
        x_t = targets.to(device=weight.device, dtype=torch.float64)
        new = closed_form_edit(weight, x_o, x_t, regulariser)
        return to_model_dtype(new, weight, name), edit_objective(weight, new, x_o, x_t, regulariser)
    workspace = workspace or Workspace()
    update, objective = edit_factors(weight, sources, targets, regulariser, workspace)
    return add_low_rank(weight, update, name, out=out, workspace=workspace), objective


def edit_objective(weight, new_weight, sources, targets, regulariser: Regulariser | float) -> float:
    """||X_o W_new^T - X_t W^T||^2 + tr((W_new - W) A (W_new - W)^T), in float64."""
    regulariser = as_regulariser(regulariser)
    w, w_new = weight.detach().double(), new_weight.detach().double()
    x_o, x_t = sources.detach().double(), targets.detach().double()
    update = w_new - w
    penalty = ((update @ regulariser.matrix(w.shape[1], w.device)) * update).sum()
    return float(((x_o @ w_new.T - x_t @ w.T) ** 2).sum() + penalty)


def compress_rows(
    sources: torch.Tensor, targets: torch.Tensor, energy: float
) -> tuple[torch.Tensor, torch.Tensor]:  # [k, in] float64 x2, k <= min(n, in)
    """Fewer rows with the same closed form, on the singular directions of ``X_o`` that hold ``energy`` of its
    squared norm: with ``X_o = U S V^T``, ``(S V^T, U^T X_t)``. Keeping every direction is exact (the objective moves
    by a constant); dropping the weakest leaves the edit alone along them, as for any direction no concept row
    takes, and the update's rank at most k."""
    u, singular, v_t = torch.linalg.svd(sources.to(torch.float64), full_matrices=False)
    share = singular.square().cumsum(0) / singular.square().sum().clamp_min(1e-300)
    keep = min(int((share < energy).sum()) + 1, len(singular))
    return singular[:keep, None] * v_t[:keep], u[:, :keep].T @ targets.to(torch.float64)
