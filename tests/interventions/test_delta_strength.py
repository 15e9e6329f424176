"""A delta applied at a strength s writes W + s (W' - W): 0 is the original model and 1 the edit, bit for bit, for
factored and dense updates alike; the handle reverts; a strength outside [0, 1] is refused in one line."""

import pytest
import torch

from locoedit.core.errors import LocoeditError
from locoedit.edit import EditRequest, compute_edit
from locoedit.models import adapter_for, load_adapter
from locoedit.testing import TINY_PIPELINES


@pytest.fixture(scope="module")
def factored(tmp_path_factory):
    adapter = adapter_for(TINY_PIPELINES["sd"](tmp_path_factory.mktemp("sd") / "sd"))
    request = EditRequest(
        model="tiny-sd",
        concepts=("van gogh",),
        targets=("a painting",),
        kind="style",
        layers=(1,),
        token="last-subject",
    )
    delta = compute_edit(adapter, request)
    assert delta.factors and not delta.tensors
    return adapter, delta


@pytest.fixture(scope="module")
def dense():
    adapter = load_adapter("toyworld")
    request = EditRequest(model="toyworld", concepts=("circle",), targets=("square",), layers=(2,))
    delta = compute_edit(adapter, request)  # more concept rows than the text width: full rank, stored dense
    assert delta.tensors and not delta.factors
    return adapter, delta


def _weights(adapter, names):
    parameters = dict(adapter.denoiser.named_parameters())
    return {name: parameters[name].detach().clone() for name in names}


@pytest.mark.parametrize("case", ["factored", "dense"])
def test_strength_one_is_the_edit_and_zero_the_original(case, request):
    adapter, delta = request.getfixturevalue(case)
    original = _weights(adapter, delta.parameters)
    with delta.apply(adapter):
        edited = _weights(adapter, delta.parameters)
    with delta.apply(adapter, strength=1.0):
        assert all(torch.equal(w, edited[n]) for n, w in _weights(adapter, delta.parameters).items())
    with delta.apply(adapter, strength=0.0):
        assert all(torch.equal(w, original[n]) for n, w in _weights(adapter, delta.parameters).items())
    assert all(torch.equal(w, original[n]) for n, w in _weights(adapter, delta.parameters).items())


@pytest.mark.parametrize("case", ["factored", "dense"])
def test_a_strength_between_scales_the_update(case, request):
    adapter, delta = request.getfixturevalue(case)
    original = _weights(adapter, delta.parameters)
    with delta.apply(adapter):
        edited = _weights(adapter, delta.parameters)
    with delta.apply(adapter, strength=0.25):
        for name, weight in _weights(adapter, delta.parameters).items():
            expected = original[name].double() + 0.25 * (edited[name].double() - original[name].double())
            assert torch.allclose(weight.double(), expected, atol=1e-6, rtol=0)
            assert not torch.equal(weight, original[name]) and not torch.equal(weight, edited[name])
    assert all(torch.equal(w, original[n]) for n, w in _weights(adapter, delta.parameters).items())


def test_the_intervention_applies_at_its_strength_and_reverts_after_a_failed_generation(factored):
    adapter, delta = factored
    original = _weights(adapter, delta.parameters)
    with pytest.raises(RuntimeError, match="stopped"), delta.at_strength(0.5).installed(adapter):
        assert not all(torch.equal(w, original[n]) for n, w in _weights(adapter, delta.parameters).items())
        raise RuntimeError("stopped")
    assert all(torch.equal(w, original[n]) for n, w in _weights(adapter, delta.parameters).items())


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), True, "1"])
def test_a_strength_outside_zero_to_one_is_refused(factored, strength):
    adapter, delta = factored
    original = _weights(adapter, delta.parameters)
    for attempt in (lambda: delta.apply(adapter, strength), lambda: delta.at_strength(strength)):
        with pytest.raises(LocoeditError, match=r"strength .* must be a number from 0 \(the original model\) to 1"):
            attempt()
    assert all(torch.equal(w, original[n]) for n, w in _weights(adapter, delta.parameters).items())
