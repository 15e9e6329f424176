"""Bad input to LocoEdit: a clear LocoeditError naming the field and the fix, and nothing written."""

import json

import pytest
import torch

torch.set_num_threads(1)

from locoedit.adapters import adapter_for  # noqa: E402
from locoedit.edit import EditRequest, compute_edit, edit_to_file, parse_layers, resolve_layers  # noqa: E402
from locoedit.errors import LocoeditError  # noqa: E402
from locoedit.testing import TINY_PIPELINES  # noqa: E402


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
        (dict(targets=("Van Gogh",)), "equals its concept"),
        (dict(prompts=("",)), "prompt or preservation prompt is empty"),
        (dict(preserve=(" ",)), "prompt or preservation prompt is empty"),
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
    with pytest.raises(LocoeditError, match=r"out of range: this model has 7 cross-attention layers \(0..6\)"):
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


def test_layers_from_a_localize_run_folder(sd, tmp_path):
    names = [sd.layers[i].name for i in (2, 3)]
    (tmp_path / "localization.json").write_text(json.dumps({"chosen": {"layers": [2, 3], "names": names}}))
    assert [layer.index for layer in resolve_layers(sd, str(tmp_path))] == [2, 3]
    delta = compute_edit(sd, make(layers=str(tmp_path)))
    assert [layer["index"] for layer in delta.layers] == [2, 3]


def test_a_run_folder_of_another_model_is_refused(sd, tmp_path):
    (tmp_path / "localization.json").write_text(json.dumps({"chosen": {"layers": [2], "names": ["transformer_blocks.2.attn2"]}}))
    with pytest.raises(LocoeditError, match="the run was for another model"):
        resolve_layers(sd, str(tmp_path))


def test_auto_layers_run_locogen_first(sd):
    req = make(layers="auto", auto_window=2, auto_steps=2, auto_seeds=(0,), prompts=("a painting in the style of {c}",))
    delta = compute_edit(sd, req)
    chosen = [layer["index"] for layer in delta.layers]
    assert len(chosen) == 2 and chosen[1] == chosen[0] + 1
