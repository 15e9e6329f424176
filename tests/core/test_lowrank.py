"""Low-rank updates W + U V: blocks of rows, the dtype's range (both signs, the limit itself), the out buffer,
refusals that name what is wrong, and a workspace that is reused."""

import pytest
import torch

from locoedit.core.errors import LocoeditError
from locoedit.core.lowrank import LowRank, Workspace, add_low_rank, check_low_rank_fits, rows_per_block, to_model_dtype

HALF_MAX = torch.finfo(torch.float16).max  # 65504, representable


def _update(out=8, inputs=16, rank=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LowRank(
        torch.randn(out, rank, generator=g, dtype=torch.float64),
        torch.randn(rank, inputs, generator=g, dtype=torch.float64),
    )


def test_blocks_are_about_four_mebibytes_of_float64_rows():
    assert rows_per_block((300, 4096)) == 128  # 128 rows x 4096 x 8 bytes = 4 MiB
    assert rows_per_block((50, 4096)) == 50  # never more rows than the matrix has
    assert rows_per_block((4, 1 << 20)) == 1  # a row wider than a block still makes a block of one row


def test_values_at_the_dtypes_limit_fit_and_beyond_it_on_either_side_are_refused():
    like = torch.zeros(1, 2, dtype=torch.float16)
    exact = to_model_dtype(torch.tensor([[HALF_MAX, -HALF_MAX]], dtype=torch.float64), like, "w")
    assert exact.tolist() == [[HALF_MAX, -HALF_MAX]]
    for value in (1e6, -1e6):
        with pytest.raises(
            LocoeditError,
            match="^w: the edited matrix has entries beyond what torch.float16 holds "
            "\\(max 65504\\); raise the lambdas or edit the model in float32$",
        ):
            to_model_dtype(torch.tensor([[0.0, value]], dtype=torch.float64), like, "w")


def test_the_sum_is_contiguous_even_for_a_transposed_weight():
    update = _update(out=16, inputs=8)
    weight = torch.randn(8, 16).T  # [16, 8], not contiguous
    result = add_low_rank(weight, update)
    assert result.is_contiguous()
    torch.testing.assert_close(result, (weight.double() + update.up @ update.down).float())


@pytest.mark.parametrize("bad_out", [torch.empty(8, 15), torch.empty(8, 16, dtype=torch.float64), torch.empty(16, 8).T])
def test_an_out_buffer_of_the_wrong_shape_dtype_or_layout_is_refused(bad_out):
    with pytest.raises(ValueError, match="out must be a contiguous torch.float32 tensor of shape \\(8, 16\\)"):
        add_low_rank(torch.zeros(8, 16), _update(), out=bad_out)


def test_an_update_for_another_shape_is_refused_naming_both_shapes():
    with pytest.raises(
        LocoeditError,
        match="^w: an update of shape \\[8, 16\\] does not fit the model's \\[8, 12\\] "
        "matrix; the delta is for another model$",
    ):
        add_low_rank(torch.zeros(8, 12), _update(), "w")


def test_an_overflow_found_by_the_exact_check_names_the_parameter():
    update = LowRank(torch.full((4, 1), 1e3, dtype=torch.float64), torch.full((1, 4), 1e3, dtype=torch.float64))
    with pytest.raises(LocoeditError, match="^w: the edited matrix"):
        check_low_rank_fits(torch.zeros(4, 4, dtype=torch.float16), update, "w")
    check_low_rank_fits(torch.zeros(4, 4, dtype=torch.float16), LowRank(update.up / 10, update.down / 10), "w")


@pytest.mark.parametrize(
    "up, down, message",
    [
        (
            torch.zeros(8, 2),
            torch.zeros(2, 16, dtype=torch.float64),
            "must be float64, got torch.float32 and torch.float64; the delta is damaged$",
        ),
        (torch.zeros(8, 2, dtype=torch.float64), torch.zeros(2, 16), "must be float64"),
        (
            torch.zeros(8, dtype=torch.float64),
            torch.zeros(2, 16, dtype=torch.float64),
            "^low-rank factors of shapes \\[8\\] and \\[2, 16\\] do not multiply; the delta is damaged$",
        ),
        (torch.zeros(8, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), "shapes \\[8, 2\\] and \\[2\\]"),
        (torch.zeros(8, 3, dtype=torch.float64), torch.zeros(2, 16, dtype=torch.float64), "do not multiply"),
        (
            torch.full((8, 2), float("inf"), dtype=torch.float64),
            torch.zeros(2, 16, dtype=torch.float64),
            "^low-rank factors hold inf or nan; the delta is damaged or the edit diverged \\(raise the lambdas\\)$",
        ),
    ],
)
def test_damaged_factors_are_refused(up, down, message):
    with pytest.raises(LocoeditError, match=message):
        LowRank(up, down)


def test_a_workspace_reuses_its_buffer_and_grows_only_when_needed():
    workspace = Workspace()
    first = workspace.block(4, 8, torch.device("cpu"))
    assert first.shape == (4, 8) and first.dtype == torch.float64
    assert workspace.block(4, 8, torch.device("cpu")).data_ptr() == first.data_ptr()  # the same size: reused
    assert workspace.block(2, 8, torch.device("cpu")).data_ptr() == first.data_ptr()  # smaller: reused
    assert workspace.block(8, 8, torch.device("cpu")).shape == (8, 8)  # larger: a new buffer
