"""The toy world's suites and probe features; an evaluation on the shipped toy model.

Skipped with a reason where ``locoedit.toyworld`` (or its shipped probe / pipeline) is not present.
"""

import json

import pytest
import torch

torch.set_num_threads(1)

toyworld = pytest.importorskip("locoedit.toyworld", reason="locoedit.toyworld is not in this checkout")

from locoedit.evaluate import EvaluationSuite, evaluate, shipped_suites

TOY_SUITES = [name for name in shipped_suites() if name.startswith("toyworld-")]
needs_probe = pytest.mark.skipif(
    not toyworld.PROBE_PATH.is_file(), reason="the toy world's probe weights are not shipped here"
)
needs_model = pytest.mark.skipif(
    not (toyworld.MODEL_DIR / "model_index.json").is_file(),
    reason="the toy world's pipeline weights are not shipped here",
)


def _states(prompt: str, concept: str, probe) -> bool:
    """Whether the caption *names* the concept (a fact by its name, not by its look); several concepts joined by ", "
    (a suite for a multi-concept edit): any of them."""
    attributes = toyworld.parse_caption(prompt, expand_facts=False)
    if ", " in concept:
        return any(_states(prompt, part, probe) for part in concept.split(", "))
    pairs = probe.resolve(concept)
    if concept in toyworld.load_vocab().facts:
        return attributes.get("fact") == concept
    return all(attributes.get(attribute) == value for attribute, value in pairs)


@pytest.mark.parametrize("name", TOY_SUITES)
def test_toyworld_suites_speak_the_vocabulary(name):
    from locoedit.toyworld.probe import ToyworldProbe

    probe = ToyworldProbe.create()  # untrained: only its vocabulary is used here
    suite = EvaluationSuite.load(name)
    assert suite.model == "toyworld" and suite.scorer == "toyworld"
    for split in ("test", "validation"):
        _check_split(suite.split(split), probe)


def _check_split(suite, probe):
    for concept in suite.concepts:
        for part in concept.split(", "):
            probe.resolve(part)  # raises for a phrase the probe cannot score
    for prompt in suite.concept_prompts + suite.paraphrases:
        assert _states(prompt, suite.concept, probe), f"{prompt!r} does not state {suite.concept!r}"
    for prompt_set in suite.neighbours + suite.unrelated:
        for prompt in prompt_set.prompts:
            assert _states(prompt, prompt_set.concept, probe), f"{prompt!r} does not state {prompt_set.concept!r}"
            assert not _states(prompt, suite.concept, probe), f"{prompt!r} names the edited concept"
    assert len(set(suite.paraphrases) & set(suite.concept_prompts)) == 0


@needs_probe
def test_toyworld_scorer_reads_features_and_attributes():
    from locoedit.scoring import make_scorer

    scorer = make_scorer("toyworld")
    scenes = [
        {"color": "red", "texture": "striped", "shape": "circle", "background": "black", "style": "kandinsky"},
        {"color": "blue", "texture": "plain", "shape": "square", "background": "white", "style": "none"},
    ]
    images = torch.stack(
        [
            torch.from_numpy(toyworld.render(scene, seed)).permute(2, 0, 1).float() / 255
            for seed, scene in enumerate(scenes)
        ]
    )
    features = scorer.features(images)
    assert features.shape == (2, 128) and torch.isfinite(features).all()
    assert len(scorer.probe.net.body._forward_hooks) == 0, "the feature hook must be removed"
    predicted = scorer.predict(images)
    for scene, attributes in zip(scenes, predicted):
        assert {a: attributes[a] for a in scene} == scene
    assert scorer.concept_attributes("the sun") == {"color", "shape", "texture"}
    assert scorer.concept_attributes("in the style of kandinsky") == {"style"}
    assert scorer.presence_threshold == 0.5
    with pytest.raises(ValueError, match="unknown concept"):
        scorer.check_concept("in the style of monet")


@needs_probe
@needs_model
@pytest.mark.slow
def test_evaluate_an_object_edit_on_the_toy_model(tmp_path):
    from dataclasses import replace

    from locoedit.delta.file import tensor_sha256
    from locoedit.edit import EditRequest, compute_edit
    from locoedit.models import load_adapter
    from locoedit.scoring import make_scorer

    adapter = load_adapter("toyworld", device="cpu")
    suite = replace(EvaluationSuite.load("toyworld-object-circle"), seeds=(0, 1))
    delta = compute_edit(
        adapter,
        EditRequest(
            model="toyworld",
            concepts=("circle",),
            targets=("square",),
            kind="object",
            prompts=("a {c}", "a red {c} on black", "a blue {c} on white", "a green striped {c} on gray"),
            layers=tuple(range(len(adapter.layers))),
        ),
    )
    weights = {n: tensor_sha256(p) for n, p in adapter.denoiser.named_parameters()}
    result = evaluate(adapter, delta, suite, make_scorer("toyworld"), out=tmp_path / "eval")
    assert {n: tensor_sha256(p) for n, p in adapter.denoiser.named_parameters()} == weights
    headline = result.headline
    for name in ("efficacy", "generalization", "specificity", "other_attributes"):
        assert 0 <= getattr(headline, name) <= 1
    efficacy = result.metrics.efficacy
    assert efficacy.score.after < efficacy.score.before, "editing every layer circle -> square removes circles"
    # Target adoption: squares drawn where the prompts ask for circles; none before the edit.
    assert efficacy.adopted_before == 0 and headline.adoption == efficacy.adopted_after > 0.5
    assert all(i.adopted_after is not None for i in result.items if i.group == "concept")
    assert all(i.adopted_after is None for i in result.items if i.group in ("neighbours", "unrelated"))
    # Look-alikes: "the sun" (a circle by fact) is the suite's entangled prompt; its retention is the third figure.
    assert {i.prompt for i in result.items if i.group == "lookalikes"} == {"the sun on black", "the sun on white"}
    assert 0 <= headline.lookalikes <= 1 and result.metrics.specificity.lookalikes.images == 4
    assert result.metrics.quality.features == "toy-world probe, penultimate layer"
    assert result.metrics.specificity.other_attributes.ignored == ["shape"]
    data = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert data["items"][0]["attributes_before"].keys() >= {"color", "shape", "background", "texture", "style"}
