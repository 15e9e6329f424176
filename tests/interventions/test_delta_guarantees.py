"""What a delta guarantees besides its values: the architecture fingerprint's exact formula (it is written into every
delta file), a revert that is done once only, an overflow refused before any row is written, and refusals that are
LocoeditErrors naming the parameter."""

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from locoedit.core.errors import LocoeditError
from locoedit.core.lowrank import LowRank
from locoedit.delta.file import EditDelta, architecture_fingerprint, describe_original
from locoedit.edit import EditRequest, compute_edit
from locoedit.models import adapter_for
from locoedit.testing import TINY_PIPELINES

REQUEST = EditRequest(
    model="tiny-sd", concepts=("van gogh",), targets=("a painting",), kind="style", layers=(1,), token="last-subject"
)


class Renamed(torch.nn.Linear):
    """The same parameters as a Linear, another class."""


def test_the_fingerprint_is_the_sha256_of_the_class_and_the_sorted_parameter_shapes():
    linear = torch.nn.Linear(3, 2)
    by_hand = hashlib.sha256(b"Linear\nbias:(2,)\nweight:(2, 3)").hexdigest()
    assert architecture_fingerprint(linear) == by_hand  # files written by earlier versions must keep matching
    assert architecture_fingerprint(linear.half()) == by_hand  # dtype and values do not enter it
    assert architecture_fingerprint(Renamed(3, 2)) != by_hand  # the class does


def test_a_handle_reverts_once_and_never_undoes_a_later_edit(tmp_path):
    adapter = adapter_for(TINY_PIPELINES["sd"](tmp_path / "sd"))
    delta = compute_edit(adapter, REQUEST)
    name = delta.parameters[0]
    parameter = dict(adapter.denoiser.named_parameters())[name]
    original, edited = parameter.detach().clone(), delta.edited_values(adapter)[name]
    first = delta.apply(adapter)
    assert first.reverted is False
    first.revert()
    assert first.reverted is True and torch.equal(parameter, original)
    second = delta.apply(adapter)
    first.revert()  # a second revert of the first handle must not restore the originals under the second edit
    assert torch.equal(parameter, edited)
    second.revert()
    assert torch.equal(parameter, original)


def _wide_half_linear():
    """A float16 [300, 4096] matrix: add_low_rank works through it in three blocks of rows (128, 128, 44). Entries
    up to 5 in size, so that the updates below are not implausibly large next to it (under 100 times its norm)."""
    linear = torch.nn.Linear(4096, 300, bias=False)
    with torch.no_grad():
        linear.weight.uniform_(-5, 5, generator=torch.Generator().manual_seed(0))
    return linear.half()


def _overflow_in_the_last_row(weight, case):
    """Factors that fit in the first block's rows but overflow float16 in the last row, built so that only the
    Cauchy-Schwarz bound max|W| + max_i ||U_i|| max_j ||V^j|| (not a smaller estimate) sends apply to the exact check."""
    up, down = torch.zeros(300, 4, dtype=torch.float64), torch.zeros(4, 4096, dtype=torch.float64)
    up[:128] = 1.0  # first block: changed, and within range
    if case == "update":  # the update alone overflows, concentrated in one column: U V [-1, -1] = 4 * 200 * 100
        down[:, -1] = 100.0
        up[-1] = 200.0
    else:  # a large negative weight pushed over the edge: -65000 - 4 * 300 = -66200
        with torch.no_grad():
            weight[-1, -1] = -65000.0
        down[:, -1] = 1.0
        up[-1] = -300.0
    return LowRank(up, down)


@pytest.mark.parametrize("case", ["update", "negative weight"])
def test_apply_refuses_an_overflow_in_a_late_block_before_writing_any(case):
    linear = _wide_half_linear()
    update = _overflow_in_the_last_row(linear.weight, case)
    delta = EditDelta.computed_on(
        linear, "wide", "locoedit", [], {}, {"weight": describe_original(linear.weight)}, {}, {"weight": update}
    )
    before = linear.weight.detach().clone()
    with pytest.raises(LocoeditError, match="^weight: the edited matrix has entries beyond what torch.float16 holds"):
        delta.apply(linear)
    assert torch.equal(linear.weight, before)  # not even the first block, which fits, was written


def test_computing_an_overflowing_edit_names_the_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False)).half()  # its matrix is "0.weight"
    huge = LowRank(torch.full((4, 1), 1e3, dtype=torch.float64), torch.full((1, 4), 1e3, dtype=torch.float64))
    delta = EditDelta.computed_on(
        model, "tiny", "locoedit", [], {}, {"0.weight": describe_original(model[0].weight)}, {}, {"0.weight": huge}
    )
    with pytest.raises(LocoeditError, match="^0.weight: the edited matrix has entries beyond what torch.float16 holds"):
        delta.edited_values(model)


def test_a_delta_file_lacking_a_metadata_field_is_a_locoedit_error(tmp_path):
    delta = compute_edit(adapter_for(TINY_PIPELINES["sd"](tmp_path / "sd")), REQUEST)
    metadata = delta.metadata()
    del metadata["settings"]
    save_file(delta.stored_tensors(), str(tmp_path / "damaged.safetensors"), metadata=metadata)
    with pytest.raises(LocoeditError, match="damaged locoedit delta: metadata lacks settings"):
        EditDelta.load(tmp_path / "damaged.safetensors")
