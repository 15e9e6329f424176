"""What a delta stores about its model and its handle: the architecture fingerprint's exact formula (it is written
into every delta file), a revert that is done once only, and refusals that are LocoeditErrors naming the parameter."""

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from locoedit.core.errors import LocoeditError
from locoedit.core.lowrank import LowRank
from locoedit.edit import EditRequest, compute_edit
from locoedit.interventions.delta import EditDelta, architecture_fingerprint, describe_original
from locoedit.models import adapter_for
from locoedit.testing import TINY_PIPELINES

REQUEST = EditRequest(model="tiny-sd", concepts=("van gogh",), targets=("a painting",), kind="style", layers=(1,),
                      token="last-subject")


class Renamed(torch.nn.Linear):
    """The same parameters as a Linear, another class."""


def test_the_fingerprint_is_the_sha256_of_the_class_and_the_sorted_parameter_shapes():
    linear = torch.nn.Linear(3, 2)
    by_hand = hashlib.sha256("Linear\nbias:(2,)\nweight:(2, 3)".encode()).hexdigest()
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


def test_computing_an_overflowing_edit_names_the_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False)).half()  # its matrix is "0.weight"
    huge = LowRank(torch.full((4, 1), 1e3, dtype=torch.float64), torch.full((1, 4), 1e3, dtype=torch.float64))
    delta = EditDelta.computed_on(model, "tiny", "locoedit", [], {}, {"0.weight": describe_original(model[0].weight)},
                                  {}, {"0.weight": huge})
    with pytest.raises(LocoeditError, match="^0.weight: the edited matrix has entries beyond what torch.float16 holds"):
        delta.edited_values(model)


def test_a_delta_file_lacking_a_metadata_field_is_a_locoedit_error(tmp_path):
    delta = compute_edit(adapter_for(TINY_PIPELINES["sd"](tmp_path / "sd")), REQUEST)
    metadata = delta.metadata()
    del metadata["settings"]
    save_file(delta.stored_tensors(), str(tmp_path / "damaged.safetensors"), metadata=metadata)
    with pytest.raises(LocoeditError, match="damaged locoedit delta: metadata lacks settings"):
        EditDelta.load(tmp_path / "damaged.safetensors")
