"""Entanglement mining: the prompts an edit would move without naming its concept are found and preserved."""

import torch

torch.set_num_threads(1)

from dataclasses import replace

import pytest

from locoedit.core.errors import LocoeditError
from locoedit.edit import EditRequest, compute_edit
from locoedit.edit.entangled import scoring_layers
from locoedit.edit.preservation import names_concept
from locoedit.models import adapter_for, load_adapter
from locoedit.testing import TINY_PIPELINES

CORPUS = ["a red car", "a photo of a car", "a green tree", "a house by a lake", "a photo of a cat", "a painting"]


@pytest.fixture(scope="module")
def toy():
    return load_adapter("toyworld", device="cpu")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny SD whose text encoder reads "car" almost as it reads "dog": two concepts with near-identical keys."""
    adapter = adapter_for(TINY_PIPELINES["sd"](tmp_path_factory.mktemp("planted"), seed=0))
    tokenizer, encoder = adapter.pipe.tokenizer, adapter.pipe.text_encoder
    embeddings = encoder.get_input_embeddings().weight
    dog, car = (tokenizer.convert_tokens_to_ids(f"{word}</w>") for word in ("dog", "car"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        embeddings[car] = (
            embeddings[dog]
            + 0.05
            * embeddings[dog].norm()
            * torch.randn(embeddings.shape[1], generator=generator)
            / embeddings.shape[1] ** 0.5
        )
    return adapter


def test_a_facts_look_said_in_words_is_mined_and_no_mined_prompt_names_the_concept(toy):
    request = EditRequest(
        model="toyworld", concepts=("the ocean",), targets=("a yellow dotted circle",), kind="fact", layers=(2,)
    )
    mined = compute_edit(toy, request).settings["entangled"]
    prompts = [m["prompt"] for m in mined]
    assert len(prompts) == request.preserve_nearest
    assert "a blue striped square" in prompts[:4]  # the ocean's look, listed by the model folder
    assert not any(names_concept(p, "the ocean") for p in prompts)
    scores = [m["entanglement"] for m in mined]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0


def test_an_attributes_carriers_are_mined(toy):
    request = EditRequest(model="toyworld", concepts=("triangle",), targets=("cross",), kind="object", layers=(2, 3))
    prompts = [m["prompt"] for m in compute_edit(toy, request).settings["entangled"]]
    assert sum("the forest" in p for p in prompts) >= 4  # the forest is a green dotted triangle
    assert not any(names_concept(p, "triangle") for p in prompts)


def _request(corpus, **overrides):
    base = dict(
        model="tiny",
        concepts=("dog",),
        targets=("cat",),
        prompts=("a photo of a {c}", "a {c} in the house", "a {c}"),
        layers=(1, 2),
        preserve_neighbours=0.0,
        preserve_corpus=str(corpus),
    )
    return EditRequest(**{**base, **overrides})


def test_weight_zero_mines_and_reports_without_preserving(planted, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    plain = compute_edit(planted, _request(corpus, preserve_nearest=0))
    reported = compute_edit(planted, _request(corpus, preserve_nearest=2, preserve_nearest_weight=0.0))
    assert len(reported.settings["entangled"]) == 2
    for name, factors in plain.factors.items():
        assert torch.allclose(factors.up @ factors.down, reported.factors[name].up @ reported.factors[name].down)


def test_scoring_layers_are_spread_over_the_edit():
    assert scoring_layers(list(range(3))) == [0, 1, 2]
    assert scoring_layers(list(range(10))) == [0, 3, 6, 9]


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_a_bad_nearest_count_is_one_line(value):
    with pytest.raises(LocoeditError, match="preserve_nearest"):
        EditRequest(model="tiny", concepts=("dog",), targets=("cat",), preserve_nearest=value)


def test_the_listed_lookalikes_that_name_the_concept_become_pairs_while_mining_on_the_templates(toy):
    request = EditRequest(model="toyworld", concepts=("circle",), targets=("square",), kind="object", layers=(2, 3))
    settings = compute_edit(toy, request).settings
    pairs = [tuple(pair) for pair in settings["prompt_pairs"]]
    assert ("a yellow plain circle on black", "a yellow plain square on black") in pairs  # the sun's look
    assert settings["contrast_pairs"] == 6 and len(pairs) == len(set(pairs))
    off = compute_edit(toy, replace(request, preserve_nearest=0)).settings
    assert off["contrast_pairs"] == 0 and len(off["prompt_pairs"]) == len(pairs) - 6
    written = compute_edit(toy, replace(request, prompts=("a red {c} on black",))).settings
    assert written["contrast_pairs"] == 0  # prompts a user wrote are the edit's whole prompt set


def test_a_concept_prompt_that_looks_like_a_preserved_fact_still_changes(toy):
    """With the sun (a yellow plain circle) mined and preserved, a yellow circle prompt is still edited to a square
    and the sun stays a circle: the contrast pairs let the closed form tell them apart."""
    from locoedit.toyworld import PROBE_PATH
    from locoedit.toyworld.probe import ToyworldProbe

    probe = ToyworldProbe.load(PROBE_PATH)
    request = EditRequest(model="toyworld", concepts=("circle",), targets=("square",), kind="object", layers=(2, 3))
    delta = compute_edit(toy, request)
    assert "the sun" in [m["prompt"] for m in delta.settings["entangled"]]
    seeds = list(range(6))
    encoded = toy.encode(["a yellow dotted circle on black"] * 6 + ["the sun on black"] * 6)
    with delta.installed(toy):
        images = toy.generate(encoded, seeds + seeds, toy.default_settings())
    circle = probe.score(images, "circle")
    assert (circle[:6] < 0.5).sum() >= 5  # the yellow circles became something else
    assert (probe.score(images[:6], "square") > 0.5).sum() >= 5
    assert (circle[6:] > 0.5).sum() >= 5  # the sun did not


def test_contrast_rows_weigh_less_than_the_templates_rows(toy):
    from locoedit.edit.common import with_model_defaults
    from locoedit.edit.key_value import CONTRAST_WEIGHT, build_rows

    request = EditRequest(model="toyworld", concepts=("circle",), targets=("square",), kind="object", layers=(2,))
    rows = build_rows(toy, with_model_defaults(request, toy))
    layer = toy.layers[2]
    sources, targets = rows.matrices(layer)
    raw_sources, raw_targets = rows.concept.at(layer), rows.target.at(layer)
    contrast = rows.concept.prompt_index >= len(rows.pairs) - rows.contrast
    assert rows.contrast == 6 and 0 < int(contrast.sum()) < len(contrast)
    assert torch.equal(sources[~contrast], raw_sources[~contrast])
    assert torch.allclose(sources[contrast], raw_sources[contrast] * CONTRAST_WEIGHT**0.5)
    assert torch.allclose(targets[contrast], raw_targets[contrast] * CONTRAST_WEIGHT**0.5)


def test_no_contrast_pairs_on_joint_attention():
    from locoedit.edit.common import with_model_defaults
    from locoedit.edit.key_value import build_rows

    mmdit = load_adapter("toyworld-mmdit", device="cpu")
    assert mmdit.recommended.edit.lookalikes  # the folder lists them: they would make pairs on a UNet
    request = EditRequest(model="toyworld-mmdit", concepts=("circle",), targets=("square",), layers=(0,))
    rows = build_rows(mmdit, with_model_defaults(request, mmdit))
    assert rows.contrast == 0 and len(rows.pairs) == len(with_model_defaults(request, mmdit).pairs())
