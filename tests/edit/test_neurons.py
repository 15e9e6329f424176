"""Neuron-level edits: neurons ranked by their contribution to what the image reads of the concept, counted by the
share of it they hold, replaced by the neutral mean, and the same kind of delta."""

import pytest
import torch

torch.set_num_threads(1)

from locoedit.core.errors import LocoeditError
from locoedit.delta.file import EditDelta, tensor_sha256
from locoedit.edit import NeuronRequest, compute_edit
from locoedit.edit.common import with_model_defaults
from locoedit.edit.neurons import (
    _neutral_positions,
    constant_fit,
    count_by_share,
    neuron_contributions,
    neuron_zscores,
)
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


def test_a_neuron_the_image_does_not_read_is_not_chosen_though_its_zscore_is_highest():
    """Contribution = gain x RMS shift from the neutral mean: neuron 7 separates concept from neutral text best (the
    largest z-score) but its output column is zero, so replacing it changes nothing the image sees; neuron 2 shifts
    less, relative to its spread, but is read strongly."""
    g = torch.Generator().manual_seed(0)
    neutral = torch.randn(50, 10, generator=g, dtype=torch.float64)
    concept = torch.randn(6, 10, generator=g, dtype=torch.float64) * 0.1
    concept[:, 7] += 6.0
    neutral[:, 2] *= 4.0
    concept[:, 2] += 3.0
    gain = torch.ones(10, dtype=torch.float64)
    gain[7] = 0.0
    scores = neuron_zscores(concept, neutral)
    assert int(scores.abs().argmax()) == 7
    contributions = neuron_contributions(concept, neutral.mean(0), gain)
    assert int(contributions.argmax()) == 2 and contributions[7] == 0
    expected = gain[2] * ((concept[:, 2] - neutral[:, 2].mean()) ** 2).mean().sqrt()
    torch.testing.assert_close(contributions[2], expected)


def test_the_count_is_the_fewest_neurons_holding_the_share():
    contributions = torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=torch.float64)  # squares 1, 9, 0.25, 4 of 14.25
    assert count_by_share(contributions, 9 / 14.25) == 1
    assert count_by_share(contributions, 9.01 / 14.25) == 2
    assert count_by_share(contributions, 13 / 14.25) == 2
    assert count_by_share(contributions, 0.99) == 4
    assert count_by_share(torch.zeros(3, dtype=torch.float64), 0.5) == 1


@pytest.mark.parametrize("family", ["sd", "pixart"])
def test_the_chosen_neurons_are_the_top_contributions_counted_by_the_share(family, tmp_path):
    """Recomputed here from the model: the image queries' RMS per neuron of to_q (a hook of the test's own on a
    generation of the concept prompts, seed 0) and the output projection's columns."""
    adapter = adapter_for(TINY_PIPELINES[family](tmp_path))
    request = make(top_k=None, contribution_share=0.5)
    layer, concept, neutral = _rows(adapter, request)
    delta = compute_edit(adapter, request)
    squares = []
    handle = layer.module.to_q.register_forward_hook(lambda m, a, out: squares.append(out.detach().double()))
    prompts = delta.settings["concept_prompts"]
    try:
        adapter.generate(adapter.encode(prompts), [0] * len(prompts), adapter.default_settings())
    finally:
        handle.remove()
    flat = torch.cat([q.reshape(-1, q.shape[-1]) for q in squares])
    query_rms = flat.pow(2).mean(0).sqrt()
    gains = [query_rms, layer.module.to_out[0].weight.detach().double().norm(dim=0)]
    for item, projection_name, gain in zip(delta.settings["chosen_neurons"], layer.edit_projections, gains):
        projection = getattr(layer.module, projection_name)
        with torch.no_grad():
            concept_out, neutral_out = projection(concept.float()).double(), projection(neutral.float()).double()
        contributions = gain * (concept_out - neutral_out.mean(0)).pow(2).mean(0).sqrt()
        order = torch.argsort(contributions, descending=True)
        energy = contributions[order].pow(2).cumsum(0) / contributions.pow(2).sum()
        count = int((energy < 0.5).sum()) + 1
        assert item["neurons"] == order[:count].tolist(), projection_name
        assert item["contribution_share"] >= 0.5 > (energy[count - 2] if count > 1 else 0)


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
