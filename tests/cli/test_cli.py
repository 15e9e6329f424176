import json

import pytest
from typer.testing import CliRunner

from locoedit.cli import app
from locoedit.core.seeds import parse_seeds

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_layers_prints_the_table_in_execution_order(tiny_sd_folder):
    result = invoke("layers", tiny_sd_folder)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split()[:2] == ["0", "down.0"] and "to_k/to_v" in lines[1]
    assert [line.split()[1] for line in lines[1:]] == ["down.0", "down.1", "mid", "up.0", "up.0", "up.1", "up.1"]
    as_json = json.loads(invoke("layers", tiny_sd_folder, "--json").stdout)
    assert as_json[2]["name"] == "mid_block.attentions.0.transformer_blocks.0.attn2"


def test_localize_writes_a_run_folder(tiny_sd_folder, tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "localize",
        tiny_sd_folder,
        "--prompt",
        "a house in the style of van gogh",
        "--target",
        "a house",
        "--scorer",
        "pixel",
        "--window",
        "3",
        "--seeds",
        "0-1",
        "--steps",
        "2",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "localization.json").read_text())
    assert data["concept"] == "in the style of van gogh" and data["seeds"] == [0, 1]
    assert len(data["windows"]) == 5 and all(len(w["layers"]) == 3 for w in data["windows"])
    assert "<- chosen" in result.output and (out / "report.html").is_file()


def test_generate_writes_images_and_a_record(tiny_sd_folder, tmp_path):
    result = invoke(
        "generate", tiny_sd_folder, "--prompt", "a red circle", "--seeds", "0-2", "--steps", "2", "--out", tmp_path
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "generation.json").read_text())
    assert [image["seed"] for image in record["images"]] == [0, 1, 2]
    assert all((tmp_path / image["path"]).is_file() for image in record["images"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "a house"], "equals its prompt"),
        (["--target", "a house", "--target", "a dog"], "one target per prompt"),
        (["--target", "a dog", "--window", "99"], "larger than the model's 7"),
        (["--target", "a dog", "--window", "big"], "neither an integer nor 'auto'"),
        (["--target", "a dog", "--seeds", ","], "is empty; give at least one seed"),
        (["--target", "a dog", "--seeds", "x"], "is not a non-negative integer"),
        (["--target", "a dog", "--seeds", "5-2"], "runs backwards"),
        (["--target", "a dog", "--seeds", "0,0"], "repeats [0]"),
        (["--target", "a dog", "--scorer", "fid"], "unknown scorer"),
    ],
)
def test_bad_input_exits_with_a_clear_error_and_writes_nothing(tiny_sd_folder, tmp_path, args, message):
    out = tmp_path / "run"
    result = invoke("localize", tiny_sd_folder, "--prompt", "a house", "--out", out, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_missing_model_folder(tmp_path):
    result = invoke("layers", tmp_path / "nope")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_parse_seeds():
    assert parse_seeds("0,1,2,3") == (0, 1, 2, 3)
    assert parse_seeds("0-3,10") == (0, 1, 2, 3, 10)


def test_an_error_after_loading_a_model_is_one_line(tmp_path):
    """Third-party advice (transformers' "install torchvision") is not shown without --verbose."""
    result = invoke(
        "edit",
        "toyworld",
        "--concept",
        "circle",
        "--target",
        "square",
        "--layers",
        "99",
        "--out",
        tmp_path / "d.safetensors",
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: layer indices [99] are out of range: this model has 11 text-reading layers (0..10; `locoedit layers "
        "MODEL` lists them)"
    ]
    assert not (tmp_path / "d.safetensors").exists()
