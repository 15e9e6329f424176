"""Neuron-level edits: z-score ranking, replacement by the neutral mean, and the same kind of delta."""

import pytest
import torch

torch.set_num_threads(1)

from locoedit.core.errors import LocoeditError
from locoedit.delta.file import EditDelta, tensor_sha256
from locoedit.edit import NeuronRequest, compute_edit
from locoedit.edit.common import with_model_defaults
from locoedit.edit.neurons import _neutral_positions, constant_fit, neuron_zscores
from locoedit.edit.rows import ConceptPrompt, concept_positions, encode_rows
from locoedit.models import adapter_for
from locoedit.testing import TINY_PIPELINES

NEUTRAL = ("a photo of a house", "a picture of a tree", "an image of a car", "a photo of the circle", "a cat")


def make(**overrides):
    base = dict(model="tiny", concepts=("dog",), neutral=NEUTRAL, kind="object", layers=(1,), top_k=3)
    base.update(overrides)
    return NeuronRequest(**base)


def test_zscore_ranks_a_planted_neuron_first():
    g = torch.Generator().manual_seed(0)
    neutral = torch.randn(50, 10, generator=g, dtype=torch.float64)
    concept = torch.randn(6, 10, generator=g, dtype=torch.float64)
    concept[:, 7] += 6.0  # neuron 7 fires for the concept
    concept[:, 2] -= 3.0  # neuron 2 is suppressed by it
    scores = neuron_zscores(concept, neutral)
    order = torch.argsort(scores.abs(), descending=True).tolist()
    assert order[:2] == [7, 2] and scores[7] > 0 > scores[2]
    expected = (concept[:, 7].mean() - neutral[:, 7].mean()) / neutral[:, 7].std()
    torch.testing.assert_close(scores[7], expected)


def test_constant_fit_is_the_ridge_solution():
    rows = torch.randn(5, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u = constant_fit(rows, 1e-3)
    direct = torch.linalg.solve(
        rows.T @ rows + 1e-3 * torch.eye(12, dtype=torch.float64), rows.T @ torch.ones(5, 1, dtype=torch.float64)
    )
    torch.testing.assert_close(u, direct.squeeze(1))
    assert (rows @ u - 1).abs().max() < 1e-2


def _rows(adapter, request):
    request = with_model_defaults(request, adapter)
    layer = adapter.layers[1]
    prompts = [t.replace("{c}", "dog") for t in ("an image of {c}", "a photo of {c}", "a picture of {c}")]
    concept = encode_rows(
        adapter,
        prompts,
        [concept_positions(adapter, ConceptPrompt("dog", p, p.index("dog")), request.token) for p in prompts],
    ).at(layer)
    neutral = encode_rows(adapter, list(NEUTRAL), [_neutral_positions(adapter, p) for p in NEUTRAL]).at(layer)
    return layer, concept, neutral


@pytest.mark.parametrize("family", list(TINY_PIPELINES))
def test_top_neurons_output_their_neutral_mean_and_nothing_else_changes(family, tmp_path):
    adapter = adapter_for(TINY_PIPELINES[family](tmp_path))
    request = make()
    layer, concept, neutral = _rows(adapter, request)
    before = {name: tensor_sha256(p) for name, p in adapter.denoiser.named_parameters()}
    delta = compute_edit(adapter, request)
    unedited_copy = adapter_for(TINY_PIPELINES[family](tmp_path / "copy"))  # the same seed: the same weights
    assert delta.method == "neurons" and len(delta.settings["chosen_neurons"]) == 2
    assert {name: tensor_sha256(p) for name, p in adapter.denoiser.named_parameters()} == before
    # The neutral means computed here, from the unedited projections and the neutral rows (not what the edit recorded).
    neutral_means = {}
    for item, projection_name in zip(delta.settings["chosen_neurons"], layer.edit_projections):
        with torch.no_grad():
            neutral_out = getattr(layer.module, projection_name)(neutral.float()).double()  # [neutral rows, out]
            concept_out = getattr(layer.module, projection_name)(concept.float()).double()  # [concept rows, out]
        neutral_means[projection_name] = neutral_out.mean(dim=0)[item["neurons"]]
        concept_means = concept_out.mean(dim=0)[item["neurons"]]
        # The chosen neurons respond to the concept: their concept mean is far from the neutral one.
        assert (concept_means - neutral_means[projection_name]).abs().min() > 1e-3
        torch.testing.assert_close(
            torch.tensor(item["neutral_means"], dtype=torch.float64),
            neutral_means[projection_name],
            rtol=1e-5,
            atol=1e-6,
        )
    with delta.apply(adapter):
        for item, projection_name in zip(delta.settings["chosen_neurons"], layer.edit_projections):
            projection = getattr(layer.module, projection_name)
            neurons = item["neurons"]
            assert len(neurons) == 3
            with torch.no_grad():
                out = projection(concept.float()).double()[:, neurons]  # [rows, k]
            means = neutral_means[projection_name]
            if projection.bias is not None:  # exact: W_j = 0, b_j = m_j
                torch.testing.assert_close(out, means.expand_as(out).clone(), rtol=0, atol=1e-6)
            else:  # approximate: W_j = m_j u^T with X u ~ 1
                assert (out - means).abs().max() <= 0.05 * means.abs().max() + 1e-4
            # the delta file round-trips to exactly the weights now in the model
            stored = EditDelta.load(delta.save(tmp_path / f"{projection_name}.safetensors"))
            reloaded = stored.edited_values(unedited_copy)[f"{item['parameter']}.weight"]
            assert torch.equal(reloaded, projection.weight.detach())
    after = {name: tensor_sha256(p) for name, p in adapter.denoiser.named_parameters()}
    assert after == before
    # rows of neurons that were not chosen are bit for bit the original ones
    for item, projection_name in zip(delta.settings["chosen_neurons"], layer.edit_projections):
        projection = getattr(layer.module, projection_name)
        new = delta.edited_values(adapter)[f"{item['parameter']}.weight"]
        keep = [j for j in range(projection.out_features) if j not in item["neurons"]]
        assert torch.equal(new[keep], projection.weight.detach()[keep])


def test_the_chosen_neurons_are_the_top_zscores(tmp_path):
    adapter = adapter_for(TINY_PIPELINES["pixart"](tmp_path))
    request = make(top_k=4)
    layer, concept, neutral = _rows(adapter, request)
    delta = compute_edit(adapter, request)
    projection = getattr(layer.module, layer.edit_projections[0])
    with torch.no_grad():
        scores = neuron_zscores(projection(concept.float()).double(), projection(neutral.float()).double())
    expected = torch.argsort(scores.abs(), descending=True)[:4].tolist()
    assert delta.settings["chosen_neurons"][0]["neurons"] == expected


def test_neutral_prompts_default_to_the_target_in_the_concepts_place(tmp_path):
    adapter = adapter_for(TINY_PIPELINES["sd"](tmp_path))
    delta = compute_edit(adapter, make(neutral=(), targets=("cat",)))
    assert delta.settings["neutral_prompts"] == ["an image of cat", "a photo of cat", "a picture of cat"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(concepts=()), "concepts is empty"),
        (dict(neutral=(), targets=()), "no neutral prompts"),
        (dict(neutral=("",)), "is empty"),
        (dict(top_k=0), r"top_k must be a positive integer, got 0 \(--top-k\)"),
        (dict(layers=()), "must be non-empty"),
        (dict(token="middle"), "token 'middle' is unknown"),
        (dict(layers="auto", targets=()), "needs a --target"),
    ],
)
def test_bad_neuron_requests(overrides, message):
    with pytest.raises(LocoeditError, match=message):
        make(**overrides)
