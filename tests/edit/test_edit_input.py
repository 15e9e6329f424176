"""Bad input to LocoEdit: a clear LocoeditError naming the field and the fix, and nothing written."""

import json
from dataclasses import replace

import pytest
import torch

torch.set_num_threads(1)

from locoedit.core.errors import LocoeditError
from locoedit.edit import EditRequest, compute_edit, edit_to_file
from locoedit.edit.layers import WIDEN_BELOW, resolve_layers
from locoedit.edit.request import parse_layers
from locoedit.localize import LocalizationRequest, localize
from locoedit.models import adapter_for
from locoedit.scoring import PixelScorer
from locoedit.testing import TINY_PIPELINES


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return adapter_for(TINY_PIPELINES["sd"](tmp_path_factory.mktemp("sd")))


def make(**overrides):
    base = dict(model="tiny", concepts=("van gogh",), targets=("a painting",), kind="style", layers=(1,))
    base.update(overrides)
    return EditRequest(**base)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(concepts=()), "concepts is empty"),
        (dict(concepts=("  ",)), "concepts is empty"),
        (dict(targets=("a", "b", "c")), "got 3 targets for 1 concepts"),
        (dict(targets=()), "give --target: what the concept should become"),
        (dict(targets=("Van Gogh",)), "equals its concept"),
        (dict(prompts=("",)), "an item of prompts is empty or not text; every --prompt needs text"),
        (dict(preserve=(" ",)), "an item of preserve is empty or not text; every --preserve needs text"),
        (dict(neighbours=("",)), "an item of neighbours is empty or not text; every --neighbour needs text"),
        (dict(preserve_neighbours=-1.0), r"preserve_neighbours must be a finite number >= 0 \(0 turns it off\)"),
        (dict(preserve_general=float("inf")), "preserve_general must be a finite number >= 0"),
        (dict(lambda_key=0.0), "lambda_key must be a finite number > 0"),
        (dict(lambda_value=-1.0), "lambda_value must be a finite number > 0"),
        (dict(lambda_key=float("nan")), "lambda_key must be a finite number > 0"),
        (dict(preserve_scale=0), "preserve_scale must be"),
        (dict(token="first"), "token 'first' is unknown"),
        (dict(kind="animal"), "kind 'animal' is unknown"),
        (dict(layers=()), "layers .* must be non-empty"),
        (dict(layers=(-1,)), "must be non-empty non-negative"),
        (dict(layers=(1, 1)), "repeats an index"),
        (dict(layers="/no/such/run"), "neither 'auto'"),
        (dict(dtype="float8"), "dtype 'float8' is unknown"),
    ],
)
def test_bad_requests_are_refused_on_construction(overrides, message):
    with pytest.raises(LocoeditError, match=message):
        make(**overrides)


def test_layer_indices_out_of_range(sd, tmp_path):
    out = tmp_path / "delta.safetensors"
    with pytest.raises(LocoeditError, match=r"out of range: this model has 7 text-reading layers \(0..6;"):
        edit_to_file(make(layers=(6, 7)), out, adapter=sd)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_concept_not_among_the_prompts_tokens(sd, tmp_path):
    out = tmp_path / "delta.safetensors"
    long_prompt = "a photo of a dog in the house of the cat in the tree of the car in the style of {c}"
    with pytest.raises(LocoeditError, match="is not among the tokens of prompt"):
        edit_to_file(make(prompts=(long_prompt,)), out, adapter=sd)
    assert list(tmp_path.iterdir()) == []


def test_prompt_without_the_concept(sd):
    with pytest.raises(LocoeditError, match="contains none of the concepts"):
        compute_edit(sd, make(prompts=("a photo of a dog",)))


def test_out_must_be_a_safetensors_path(sd, tmp_path):
    with pytest.raises(LocoeditError, match="must end in .safetensors"):
        edit_to_file(make(), tmp_path / "delta.pt", adapter=sd)


def test_parse_layers():
    assert parse_layers("auto") == "auto"
    assert parse_layers("8,9") == (8, 9)
    assert parse_layers(" 3 ") == (3,)
    assert parse_layers("runs/van-gogh") == "runs/van-gogh"


@pytest.fixture(scope="module")
def run_result(sd, tmp_path_factory):
    """A finished LocoGen run of the tiny model, as `locoedit localize` writes it."""
    request = LocalizationRequest(
        model="tiny",
        prompts=("a house in the style of van gogh",),
        targets=("a house",),
        scorer="pixel",
        window=2,
        seeds=(0,),
        steps=2,
    )
    return localize(request, tmp_path_factory.mktemp("run"), sd, PixelScorer())


def _run_choosing(result, tmp_path, layers, names):
    data = result.to_json()
    data["chosen"].update(layers=layers, names=names)
    (tmp_path / "localization.json").write_text(json.dumps(data))
    return str(tmp_path)


def test_layers_from_a_localize_run_folder(sd, run_result, tmp_path):
    folder = _run_choosing(run_result, tmp_path, [2, 3], [sd.layers[i].name for i in (2, 3)])
    assert [layer.index for layer in resolve_layers(sd, make(layers=folder))] == [2, 3]
    delta = compute_edit(sd, make(layers=folder))
    assert [layer["index"] for layer in delta.layers] == [2, 3]


def test_a_run_folder_of_another_model_is_refused(sd, run_result, tmp_path):
    folder = _run_choosing(run_result, tmp_path, [2], ["transformer_blocks.2.attn2"])
    with pytest.raises(LocoeditError, match="the run was for another model"):
        resolve_layers(sd, make(layers=folder))


def test_auto_layers_default_to_the_models_concept_scorer(sd):
    # A model folder without a locoedit.json gets the paper's CLIP-Score, never the concept-blind pixel scorer.
    req = make(layers="auto", auto_window=2, auto_steps=2, auto_seeds=(0,), prompts=("a painting in the style of {c}",))
    with pytest.raises(LocoeditError, match="CLIP weights 'openai/clip-vit-base-patch16' are not available"):
        compute_edit(sd, req)


def _auto_request(tiny_clip_folder):
    """A quick ``--layers auto`` request on the tiny SD, scored by the tiny CLIP: windows of 2, one seed, 2 steps."""
    return make(
        layers="auto",
        auto_window=2,
        auto_steps=2,
        auto_seeds=(0,),
        prompts=("a painting in the style of {c}",),
        auto_scorer=f"clip:{tiny_clip_folder}",
    )


def test_auto_layers_run_locogen_first(sd, tiny_clip_folder):
    req = _auto_request(tiny_clip_folder)
    delta = compute_edit(sd, replace(req, auto_widen=0))
    chosen = [layer["index"] for layer in delta.layers]
    assert len(chosen) == 2 and chosen[1] == chosen[0] + 1
    assert delta.settings["auto_layers"] == [{"layers": chosen, "effect_share": []}]  # nothing wider to try
    # Widened: LocoGen's window first, then a layer more on each side while the edit falls short of the routing.
    tries = compute_edit(sd, req).settings["auto_layers"]
    assert tries[0]["layers"] == chosen and 1 <= len(tries) <= 1 + req.auto_widen
    for before, after in zip(tries, tries[1:]):
        assert min(before["effect_share"]) < WIDEN_BELOW
        assert after["layers"] == sorted({j for i in before["layers"] for j in (i - 1, i, i + 1) if 0 <= j < 16})


def test_a_wider_edit_that_reaches_the_look_alikes_is_refused(sd, tiny_clip_folder, monkeypatch):
    from locoedit.edit.layers import EditEffect

    req = _auto_request(tiny_clip_folder)
    monkeypatch.setattr(EditEffect, "shares", lambda self, delta: [0.0])  # always short of the routing
    monkeypatch.setattr(EditEffect, "leak", lambda self, delta, prompts: float(len(delta.layers)))  # wider leaks more
    delta = compute_edit(sd, req)
    first, refused = delta.settings["auto_layers"]
    assert refused["refused"] and len(refused["layers"]) > len(first["layers"])
    assert refused["leak"] == [float(len(first["layers"])), float(len(refused["layers"]))]
    assert [layer["index"] for layer in delta.layers] == first["layers"]  # the narrower edit is kept


def test_what_a_request_leaves_open_comes_from_the_model_folder(sd):
    from locoedit.edit.common import with_model_defaults
    from locoedit.edit.templates import prompt_templates
    from locoedit.models import load_adapter

    toy = load_adapter("toyworld", device="cpu")
    request = EditRequest(model="toyworld", concepts=("triangle",), targets=("cross",), kind="object", layers=(2,))
    resolved = with_model_defaults(request, toy)
    assert resolved.token == "from-concept" and resolved.prompts == tuple(toy.recommended.edit.templates["object"])
    assert with_model_defaults(replace(request, token="all", prompts=("a {c}",)), toy).prompts == ("a {c}",)
    # A colour or a texture takes its group's templates (adjectives), not the object kind's (nouns).
    colour = with_model_defaults(replace(request, concepts=("yellow",), targets=("blue",)), toy)
    assert colour.prompts == tuple(toy.recommended.edit.templates["colors"]) and colour.prompts[0] == "a {c} shape"
    texture = with_model_defaults(replace(request, concepts=("dotted",), targets=("striped",)), toy)
    assert texture.prompts == tuple(toy.recommended.edit.templates["textures"])
    plain = with_model_defaults(replace(request, model="tiny"), sd)  # no locoedit.json: locoedit's own defaults
    assert plain.token == "last-subject" and plain.prompt_set == prompt_templates("object")


def test_locogen_leaves_out_prompts_that_become_empty(sd):

    removal = make(concepts=("in the style of van gogh",), targets=("",), prompts=("{c}", "a house {c}"), layers="auto")
    localization = removal.localization(removal.pairs())
    assert localization.prompts == ("a house in the style of van gogh",) and localization.targets == ("a house",)
    only_empty = make(concepts=("van gogh",), targets=("",), prompts=("{c}",), layers="auto")
    with pytest.raises(LocoeditError, match="LocoGen has nothing to route to"):
        only_empty.localization(only_empty.pairs())


def _spied_auto_layers(monkeypatch, request, windows):
    """The layers ``auto`` edits when LocoGen on concept c chooses ``windows[c]``, and the (concept, adopt, prompts,
    threshold) of each LocoGen run."""
    from locoedit.edit import layers as layer_choice
    from locoedit.edit.common import with_model_defaults
    from locoedit.models import load_adapter
    from locoedit.scoring import resolve_scorer

    runs = []

    def fake_localize(run, out, adapter, scorer, progress):
        runs.append((run.concept, run.adopt, run.prompts, run.auto_threshold))
        return type("Result", (), {"chosen": type("Chosen", (), {"layers": windows[run.concept]})})

    monkeypatch.setattr(layer_choice, "localize", fake_localize)
    toy = load_adapter("toyworld", device="cpu")
    found = layer_choice.auto_localize(toy, with_model_defaults(request, toy), resolve_scorer(None, None, toy))
    return layer_choice.union_of_windows(found), runs


def test_auto_layers_localize_each_attribute_the_target_changes_and_edit_the_union(monkeypatch):
    fact = EditRequest(model="toyworld", concepts=("the ocean",), targets=("a yellow striped circle",), kind="fact")
    layers, runs = _spied_auto_layers(monkeypatch, fact, {"the ocean": [1], "blue": [5, 6], "square": [2, 3]})
    assert layers == [1, 2, 3, 5, 6]  # the fact, its colour and its shape, each where LocoGen put it
    runs_asked = [(concept, adopt) for concept, adopt, _, _ in runs]
    assert runs_asked == [("the ocean", ""), ("blue", "yellow"), ("square", "circle")]  # the ocean's stripes stay
    assert all(prompts and all("the ocean" in p for p in prompts) for _, _, prompts, _ in runs)
    # The fact's own run stops at the request's threshold; its attribute runs, whose windows are unioned, at 0.95.
    assert [threshold for *_, threshold in runs] == [0.97, 0.95, 0.95]
    _, runs = _spied_auto_layers(
        monkeypatch, replace(fact, auto_threshold=0.9), windows={"the ocean": [1], "blue": [5], "square": [2]}
    )
    assert [threshold for *_, threshold in runs] == [0.9, 0.9, 0.9]
    # One attribute, or a removal: LocoGen once, on the concept as a whole.
    for concept, target in (("triangle", "cross"), ("in the style of hokusai", "")):
        request = EditRequest(model="toyworld", concepts=(concept,), targets=(target,), kind="style")
        layers, runs = _spied_auto_layers(monkeypatch, request, {concept: [4]})
        assert layers == [4] and [(c, a) for c, a, *_ in runs] == [(concept, "")]


def test_auto_layers_of_several_concepts_localize_each_on_its_own_prompts(monkeypatch):
    both = EditRequest(
        model="toyworld", concepts=("the sun", "in the style of klimt"), targets=("a blue circle", ""), kind="style"
    )
    windows = {"the sun": [2], "yellow": [6], "in the style of klimt": [3]}
    layers, runs = _spied_auto_layers(monkeypatch, both, windows)
    assert layers == [2, 3, 6]
    assert [(c, a) for c, a, *_ in runs] == [("the sun", ""), ("yellow", "blue"), ("in the style of klimt", "")]
    assert all("the sun" in p for p in runs[0][2] + runs[1][2]) and all("klimt" in p for p in runs[2][2])
