"""The edit / neurons / apply commands through typer, on a tiny pipeline folder."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

from typer.testing import CliRunner

from locoedit.cli import app as locoedit_app
from locoedit.delta.file import EditDelta
from locoedit.testing import TINY_PIPELINES


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    TINY_PIPELINES["sd"](tmp_path_factory.mktemp("tok")).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def app():
    return locoedit_app


def run(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_edit_then_apply(app, model, tmp_path):
    delta = tmp_path / "van-gogh.safetensors"
    result = run(
        app,
        "edit",
        model,
        "--concept",
        "van gogh",
        "--concept",
        "monet",
        "--kind",
        "style",
        "--target",
        "a painting",
        "--layers",
        "1,2",
        "--preserve",
        "a dog",
        "--lambda-key",
        "0.2",
        "--lambda-value",
        "0.3",
        "--token",
        "all",
        "--out",
        delta,
    )
    assert result.exit_code == 0, result.output
    loaded = EditDelta.load(delta)
    assert [layer["index"] for layer in loaded.layers] == [1, 2]
    assert loaded.settings["concepts"] == ["van gogh", "monet"] and loaded.settings["lambda_value"] == 0.3
    result = run(app, "apply", model, delta, "--out", tmp_path / "edited")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "edited" / "model_index.json").is_file()


def test_neurons_writes_the_same_kind_of_delta(app, model, tmp_path):
    delta = tmp_path / "n.safetensors"
    result = run(
        app,
        "neurons",
        model,
        "--concept",
        "dog",
        "--kind",
        "object",
        "--neutral",
        "a photo of a cat",
        "--neutral",
        "a photo of a tree",
        "--layers",
        "3",
        "--top-k",
        "2",
        "--out",
        delta,
    )
    assert result.exit_code == 0, result.output
    assert EditDelta.load(delta).method == "neurons"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lambda-key", "0"], "lambda_key must be a finite number > 0"),
        (["--layers", "5,9"], "out of range"),
        (["--token", "middle"], "token 'middle' is unknown"),
        (["--prompt", "a photo of a house"], "contains none of the concepts"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(app, model, tmp_path, args, message):
    delta = tmp_path / "d.safetensors"
    base = ["edit", model, "--concept", "van gogh", "--target", "a painting", "--layers", "1", "--out", delta]
    result = run(app, *base, *args)
    assert result.exit_code == 2 and message in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "corpus, message",
    [
        ("# nothing but a comment\n", "holds no prompts; write one prompt per line"),
        ("van gogh\na house by van gogh\n", "names an edited concept, so none is left to preserve"),
        (None, "does not exist; give a text file with one prompt per line"),
        ("a tree\n", "statistics file"),  # with --preserve-stats pointing at something that is not one
    ],
)
def test_bad_preservation_input_exits_2_and_writes_nothing(app, model, tmp_path_factory, corpus, message):
    inputs, out = tmp_path_factory.mktemp("inputs"), tmp_path_factory.mktemp("out")
    file = inputs / "corpus.txt"
    if corpus is not None:
        file.write_text(corpus)
    extra = ["--preserve-stats", inputs / "corpus.txt"] if message == "statistics file" else []
    result = run(
        app,
        "edit",
        model,
        "--concept",
        "van gogh",
        "--target",
        "a painting",
        "--layers",
        "1",
        "--preserve-corpus",
        file,
        *extra,
        "--out",
        out / "d.safetensors",
    )
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and list(out.iterdir()) == []


def test_apply_refuses_a_delta_for_another_model(app, model, tmp_path):
    other = tmp_path / "other"
    TINY_PIPELINES["sd"](tmp_path / "tok", seed=5).save_pretrained(other)
    delta = tmp_path / "d.safetensors"
    assert (
        run(app, "edit", model, "--concept", "dog", "--target", "cat", "--layers", "1", "--out", delta).exit_code == 0
    )
    result = run(app, "apply", str(other), delta, "--out", tmp_path / "edited")
    assert result.exit_code == 2 and "original matrix differs" in result.output
    assert not (tmp_path / "edited").exists()


def test_apply_carries_the_model_folders_settings_over(app, tmp_path):
    """The edited toy pipeline is sampled like the original (its locoedit.json: 20 steps, guidance 3, its scorer)."""
    import os
    import stat

    from locoedit.models import ModelSettings, load_adapter

    delta = tmp_path / "d.safetensors"
    assert (
        run(
            app, "edit", "toyworld", "--concept", "circle", "--target", "square", "--layers", "2,3", "--out", delta
        ).exit_code
        == 0
    )
    old = os.umask(0o022)
    try:
        assert run(app, "apply", "toyworld", delta, "--out", tmp_path / "edited").exit_code == 0
    finally:
        os.umask(old)
    from dataclasses import replace

    from locoedit.toyworld import MODEL_SETTINGS_PATH

    assert ModelSettings.read(tmp_path / "edited" / "locoedit.json") == ModelSettings.read(MODEL_SETTINGS_PATH)
    original = load_adapter("toyworld", device="cpu").recommended
    carried = load_adapter(str(tmp_path / "edited"), device="cpu").recommended
    # The preservation corpus the settings name travels with them, read from the new folder.
    assert carried.edit.corpus == str(tmp_path / "edited" / "preservation_corpus.txt")
    assert carried == replace(original, edit=replace(original.edit, corpus=carried.edit.corpus))
    assert Path(carried.edit.corpus).read_text() == Path(original.edit.corpus).read_text()
    assert stat.S_IMODE((tmp_path / "edited").stat().st_mode) == 0o755


def test_the_widening_tries_of_auto_layers_are_printed_in_order():
    from locoedit.cli.main import _widening

    tries = [
        {"layers": [6, 7], "effect_share": [0.63, 0.22]},
        {"layers": [5, 6, 7, 8], "effect_share": [0.7]},
        {"layers": [4, 5, 6, 7, 8, 9], "effect_share": []},
    ]
    assert _widening(tries) == "6-7 (effect share 0.22) -> 5-8 (effect share 0.70) -> 4-9"
    refused = [
        {"layers": [2, 3, 4], "effect_share": [0.5]},
        {"layers": [1, 2, 3, 4, 5], "refused": True, "leak": [0.19, 0.49]},
    ]
    assert _widening(refused) == "2-4 (effect share 0.50) -> 1-5 refused (look-alike leak 0.19 -> 0.49)"
    assert _widening([{"layers": [2, 3, 6, 7], "effect_share": []}]) == "2,3,6,7"
    assert _widening([{"layers": [2], "effect_share": [0.5]}, {"layers": [1, 2, 3], "effect_share": []}]) == (
        "2 (effect share 0.50) -> 1-3"
    )
