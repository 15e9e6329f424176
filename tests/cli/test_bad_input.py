"""The catalogue of bad input, through the command line: each gets exit code 2 and one line on stderr that names
the problem and the fix, no traceback, and nothing is written or changed."""

import json
import pickle

import pytest
import torch
from typer.testing import CliRunner

from locoedit.cli import app

torch.set_num_threads(1)

PROMPT = ["--prompt", "a red circle on black", "--target", "a red shape on black"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Things bad input is made of: a delta of the toy world, a damaged model folder, a pickle, a binary file."""
    root = tmp_path_factory.mktemp("inputs")
    delta = root / "circle.safetensors"
    assert (
        CliRunner()
        .invoke(
            app,
            ["edit", "toyworld", "--concept", "circle", "--target", "square", "--layers", "2,3", "--out", str(delta)],
        )
        .exit_code
        == 0
    )
    (root / "a-file").write_text("not a folder")
    (root / "list-index").mkdir()
    (root / "list-index" / "model_index.json").write_text("[1, 2]")
    (root / "no-class").mkdir()
    (root / "no-class" / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    (root / "garbled").mkdir()
    (root / "garbled" / "model_index.json").write_text("{not json")
    (root / "no-unet").mkdir()
    (root / "no-unet" / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]})
    )
    (root / "pickle.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    (root / "binary.json").write_bytes(bytes(range(256)))
    (root / "folder.safetensors").mkdir()
    (root / "busy").mkdir()
    (root / "busy" / "notes.txt").write_text("mine")
    return root


def case(name, args, message):
    return pytest.param(args, message, id=name)


CATALOGUE = [
    case(
        "localize-guidance-nan",
        ["localize", "toyworld", *PROMPT, "--guidance", "nan"],
        "guidance must be a finite number",
    ),
    case(
        "localize-guidance-inf",
        ["localize", "toyworld", *PROMPT, "--guidance", "inf"],
        "guidance must be a finite number",
    ),
    case(
        "localize-guidance-negative",
        ["localize", "toyworld", *PROMPT, "--guidance", "-1"],
        "guidance must be a finite number >= 0",
    ),
    case("localize-size-not-multiple", ["localize", "toyworld", *PROMPT, "--size", "7"], "not a multiple of 8"),
    case("localize-size-zero", ["localize", "toyworld", *PROMPT, "--size", "0"], "height must be a positive integer"),
    case("localize-size-absurd", ["localize", "toyworld", *PROMPT, "--size", "100000"], "from 1 to 8192"),
    case("localize-steps-zero", ["localize", "toyworld", *PROMPT, "--steps", "0"], "steps must be a positive integer"),
    case("localize-seeds-backwards", ["localize", "toyworld", *PROMPT, "--seeds", "3-1"], "runs backwards"),
    case("localize-seeds-repeated", ["localize", "toyworld", *PROMPT, "--seeds", "0,0,0"], "repeats [0]"),
    case(
        "localize-seed-huge",
        ["localize", "toyworld", *PROMPT, "--seeds", "99999999999999999999"],
        "seeds must be between 0 and",
    ),
    case(
        "localize-unscorable-concept",
        [
            "localize",
            "toyworld",
            "--prompt",
            "a red circle on black",
            "--target",
            "a circle on black",
            "--concept",
            "purple",
        ],
        "purple",
    ),
    case("localize-window-zero", ["localize", "toyworld", *PROMPT, "--window", "0"], "window 0 is invalid"),
    case("localize-mode", ["localize", "toyworld", *PROMPT, "--mode", "fast"], "mode 'fast' is unknown"),
    case("localize-device", ["localize", "toyworld", *PROMPT, "--device", "cuda:7"], "is not on this machine"),
    case(
        "localize-long-prompt",
        [
            "localize",
            "toyworld",
            "--prompt",
            "a red circle on black " * 4,
            "--target",
            "a circle on black",
            "--concept",
            "red",
        ],
        "the text encoder reads at most 16",
    ),
    case("localize-out-is-a-file", ["localize", "toyworld", *PROMPT, "--out", "{files}/a-file"], "is a file"),
    case("localize-out-busy", ["localize", "toyworld", *PROMPT, "--out", "{files}/busy"], "holds no locoedit run"),
    case(
        "generate-steps-zero",
        ["generate", "toyworld", "--prompt", "a red circle", "--steps", "0"],
        "steps must be a positive integer",
    ),
    case(
        "generate-steps-negative",
        ["generate", "toyworld", "--prompt", "a red circle", "--steps", "-1"],
        "steps must be a positive integer",
    ),
    case(
        "generate-size-zero",
        ["generate", "toyworld", "--prompt", "a red circle", "--size", "0"],
        "size must be a positive integer",
    ),
    case(
        "generate-size-negative",
        ["generate", "toyworld", "--prompt", "a red circle", "--size", "-8"],
        "size must be a positive integer",
    ),
    case(
        "generate-out-is-a-file",
        ["generate", "toyworld", "--prompt", "a red circle", "--out", "{files}/a-file"],
        "is a file",
    ),
    case(
        "generate-out-busy",
        ["generate", "toyworld", "--prompt", "a red circle", "--out", "{files}/busy"],
        "holds no locoedit run",
    ),
    case(
        "evaluate-seeds-backwards",
        ["evaluate", "toyworld", "--edit", "{files}/circle.safetensors", "--seeds", "3-1"],
        "runs backwards",
    ),
    case("evaluate-missing-delta", ["evaluate", "toyworld", "--edit", "{files}/none.safetensors"], "does not exist"),
    case(
        "evaluate-pickle-delta",
        ["evaluate", "toyworld", "--edit", "{files}/pickle.safetensors"],
        "is not a readable safetensors file",
    ),
    case(
        "evaluate-binary-localization",
        ["evaluate", "toyworld", "--edit", "{files}/circle.safetensors", "--localization", "{files}/binary.json"],
        "is not valid JSON",
    ),
    case(
        "evaluate-batch-size",
        ["evaluate", "toyworld", "--edit", "{files}/circle.safetensors", "--batch-size", "0"],
        "batch_size must be a positive integer",
    ),
    case(
        "evaluate-out-busy",
        ["evaluate", "toyworld", "--edit", "{files}/circle.safetensors", "--out", "{files}/busy"],
        "holds no locoedit run",
    ),
    case(
        "edit-out-folder",
        [
            "edit",
            "toyworld",
            "--concept",
            "circle",
            "--target",
            "square",
            "--layers",
            "2",
            "--out",
            "{files}/folder.safetensors",
        ],
        "is a folder",
    ),
    case(
        "edit-out-suffix",
        ["edit", "toyworld", "--concept", "circle", "--target", "square", "--out", "{out}.txt"],
        "must end in .safetensors",
    ),
    case(
        "edit-layers-out-of-range",
        ["edit", "toyworld", "--concept", "circle", "--target", "square", "--layers", "99"],
        "out of range",
    ),
    case(
        "edit-lambda-zero",
        ["edit", "toyworld", "--concept", "circle", "--target", "square", "--lambda-key", "0"],
        "lambda_key must be a finite number > 0",
    ),
    case("edit-no-target", ["edit", "toyworld", "--concept", "circle"], "give --target"),
    case(
        "edit-token",
        ["edit", "toyworld", "--concept", "circle", "--target", "square", "--token", "first"],
        "token 'first' is unknown",
    ),
    case(
        "neurons-top-k",
        ["neurons", "toyworld", "--concept", "circle", "--target", "square", "--layers", "2", "--top-k", "100000"],
        "is more than the",
    ),
    case("apply-model-list-index", ["apply", "{files}/list-index", "{files}/circle.safetensors"], "is damaged"),
    case("apply-model-no-class", ["apply", "{files}/no-class", "{files}/circle.safetensors"], "is damaged"),
    case("apply-model-garbled-index", ["apply", "{files}/garbled", "{files}/circle.safetensors"], "is damaged"),
    case("apply-model-no-unet", ["apply", "{files}/no-unet", "{files}/circle.safetensors"], "could not be loaded"),
    case(
        "apply-out-busy",
        ["apply", "toyworld", "{files}/circle.safetensors", "--out", "{files}/busy"],
        "is not an empty folder",
    ),
    case("toyworld-check-batch", ["toyworld", "check", "--batch-size", "0"], "--batch-size 0 must be >= 1"),
    case("toyworld-check-model", ["toyworld", "check", "--model", "{files}/busy"], "not a toy-world pipeline folder"),
    case(
        "toyworld-check-pickle-probe",
        ["toyworld", "check", "--probe", "{files}/pickle.safetensors"],
        "not a toy-world probe",
    ),
    case(
        "trace-noise",
        ["trace", "toyworld", "--prompt", "a red circle", "--concept", "red", "--noise", "-1"],
        "noise must be a finite number >= 0",
    ),
    case(
        "trace-site",
        ["trace", "toyworld", "--prompt", "a red circle", "--concept", "red", "--site", "unet.nope"],
        "unknown site(s) unet.nope",
    ),
    case(
        "trace-concept",
        ["trace", "toyworld", "--prompt", "a red circle", "--concept", "blue"],
        "'blue' is not among the tokens",
    ),
]


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args, message", CATALOGUE)
def test_bad_input_gets_one_line_and_changes_nothing(files, tmp_path, args, message):
    out = tmp_path / "out"
    args = [a.format(files=files, out=out) for a in args]
    if "--out" not in args and args[0] not in ("toyworld", "layers"):
        args += ["--out", str(out) + (".safetensors" if args[0] in ("edit", "neurons") else "")]
    if args[0] == "apply" and "--out" not in args:
        args += ["--out", str(out)]
    before = snapshot(files)
    result = CliRunner().invoke(app, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in result.output
    assert not out.exists() and not any(tmp_path.iterdir()), "nothing may be written"
    assert snapshot(files) == before, "nothing may be changed"


def test_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import errno

    import locoedit.workflows.generate as generate

    def full(path, image):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(generate, "write_png", full)
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "toyworld",
            "--prompt",
            "a red circle",
            "--seeds",
            "0",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "No space left on device" in lines[0], result.output


def test_another_evaluation_in_the_same_folder_is_refused_and_the_same_one_resumes(files, tmp_path):
    out = tmp_path / "eval"
    args = [
        "evaluate",
        "toyworld",
        "--edit",
        str(files / "circle.safetensors"),
        "--suite",
        "toyworld-object-circle",
        "--steps",
        "2",
        "--out",
        str(out),
    ]
    assert CliRunner().invoke(app, [*args, "--seeds", "0"]).exit_code == 0
    first = (out / "evaluation.json").read_text()
    again = CliRunner().invoke(app, [*args, "--seeds", "0"])
    assert (
        again.exit_code == 0
        and json.loads((out / "evaluation.json").read_text())["items"] == json.loads(first)["items"]
    )
    other = CliRunner().invoke(app, [*args, "--seeds", "1"])
    assert other.exit_code == 2 and "holds a different run (differs in: suite)" in other.stderr
    assert json.loads((out / "evaluation.json").read_text())["items"] == json.loads(first)["items"]
