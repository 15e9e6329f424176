"""Low-rank updates of a weight matrix, ``W' = W + U V``, computed in float64 and rounded once to W's dtype.

An edit is stored as its factors (``U`` [out, r], ``V`` [r, in], float64) and becomes a matrix only when it is
applied; :func:`add_low_rank` is the one place that turns factors into new weights, so that computing an edit,
applying it and writing a pipeline folder give the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from locoedit.core.errors import LocoeditError

_BLOCK_BYTES = 1 << 22  # float64 rows per block: about 4 MiB, so a block stays in cache


def rows_per_block(shape: tuple[int, ...]) -> int:
    """How many rows of an [out, in] matrix make one cache-sized float64 block."""
    out_features, in_features = shape
    return max(1, min(out_features, _BLOCK_BYTES // (8 * in_features)))


class Workspace:
    """A reusable float64 buffer, so that editing many large matrices allocates no fresh memory per block."""

    def __init__(self):
        self._buffer = torch.empty(0, dtype=torch.float64)

    def block(self, rows: int, columns: int, device: torch.device) -> torch.Tensor:  # [rows, columns] float64
        size = rows * columns
        if self._buffer.numel() < size or self._buffer.device != device:
            self._buffer = torch.empty(size, dtype=torch.float64, device=device)
        return self._buffer[:size].view(rows, columns)


@dataclass(frozen=True)
class LowRank:
    """The update ``U V`` of one matrix: ``up`` [out, r] and ``down`` [r, in], float64, finite."""

    up: torch.Tensor  # [out, r] float64
    down: torch.Tensor  # [r, in] float64

    def __post_init__(self):
        if self.up.dtype != torch.float64 or self.down.dtype != torch.float64:
            raise LocoeditError(
                f"low-rank factors must be float64, got {self.up.dtype} and {self.down.dtype}; the delta is damaged"
            )
        if self.up.ndim != 2 or self.down.ndim != 2 or self.up.shape[1] != self.down.shape[0]:
            raise LocoeditError(
                f"low-rank factors of shapes {list(self.up.shape)} and {list(self.down.shape)} do not "
                "multiply; the delta is damaged"
            )
        if not (torch.isfinite(self.up).all() and torch.isfinite(self.down).all()):
            raise LocoeditError(
                "low-rank factors hold inf or nan; the delta is damaged or the edit diverged (raise the lambdas)"
            )

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.up.shape[0], self.down.shape[1]


def check_fits(values: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    """Refuse float64 ``values`` that ``dtype`` cannot hold (they would round to inf)."""
    limit = torch.finfo(dtype).max
    low, high = torch.aminmax(values)
    if not (torch.isfinite(low) and torch.isfinite(high) and -low <= limit and high <= limit):
        raise LocoeditError(
            f"{name}: the edited matrix has entries beyond what {dtype} holds (max {limit:g}); raise the lambdas or "
            "edit the model in float32"
        )


def to_model_dtype(new_weight: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    """Round a float64 result to the parameter's dtype; refuse values the dtype cannot hold."""
    check_fits(new_weight, like.dtype, name)
    return new_weight.to(like.dtype).contiguous()


def add_low_rank(
    weight: torch.Tensor,  # [out, in] W, any float dtype
    update: LowRank,  # U [out, r], V [r, in] float64
    name: str = "weight",
    out: torch.Tensor | None = None,  # [out, in] contiguous, W's dtype: write the result here instead of new memory
    workspace: Workspace | None = None,
) -> torch.Tensor:  # [out, in] W + U V in W's dtype
    """``W + U V`` in float64, rounded once to W's dtype, one cache-sized block of rows at a time (the matrix is
    read and written once; no float64 copy of it is made). An entry beyond the dtype's range is refused."""
    weight = weight.detach()
    if tuple(weight.shape) != update.shape:
        raise LocoeditError(
            f"{name}: an update of shape {list(update.shape)} does not fit the model's "
            f"{list(weight.shape)} matrix; the delta is for another model"
        )
    if out is not None and (out.shape != weight.shape or out.dtype != weight.dtype or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous {weight.dtype} tensor of shape {tuple(weight.shape)}")
    result = torch.empty_like(weight, memory_format=torch.contiguous_format) if out is None else out
    up, down = update.up.to(weight.device), update.down.to(weight.device)
    out_features, in_features = weight.shape
    step, workspace = rows_per_block(weight.shape), workspace or Workspace()
    for start in range(0, out_features, step):
        rows = slice(start, min(start + step, out_features))
        block = workspace.block(rows.stop - rows.start, in_features, weight.device)
        block.copy_(weight[rows]).addmm_(up[rows], down)  # W + U V for these rows, float64
        check_fits(block, weight.dtype, name)
        result[rows].copy_(block)
    return result


def check_low_rank_fits(weight: torch.Tensor, update: LowRank, name: str) -> None:
    """Refuse an update whose sum with ``weight`` would not fit W's dtype, without forming the sum when a bound
    suffices: |W + U V|_ij <= max|W| + max_i ||U_i|| max_j ||V^j|| (Cauchy-Schwarz)."""
    low, high = torch.aminmax(weight.detach())
    bound = max(-float(low), float(high)) + float(update.up.norm(dim=1).max() * update.down.norm(dim=0).max())
    if bound > torch.finfo(weight.dtype).max:
        add_low_rank(weight, update, name)  # exact check; raises if an entry does not fit
