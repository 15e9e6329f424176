"""One schema: every CLI option and every web widget of a request comes from the request's declared settings, and
values stack as documented (command line over --config over the model's presets over defaults)."""

import json
import shutil
import subprocess
import sys

import pytest
import typer

from locoedit.cli import app
from locoedit.core.errors import LocoeditError
from locoedit.core.params import flag_of, settings_of, shown_default
from locoedit.delta.request import ApplyRequest, ExportRequest
from locoedit.edit import EDIT_METHODS, ContextEmbedderRequest, EditRequest, NeuronRequest
from locoedit.evaluate.request import EvaluationRequest
from locoedit.localize.request import LocalizationRequest
from locoedit.models.names import request_for
from locoedit.trace.request import TraceRequest
from locoedit.workflows.requests import GenerationRequest, TuneRequest

COMMANDS = {
    "localize": LocalizationRequest,
    "trace": TraceRequest,
    "generate": GenerationRequest,
    "edit": EditRequest,
    "neurons": NeuronRequest,
    "context-edit": ContextEmbedderRequest,
    "tune": TuneRequest,
    "evaluate": EvaluationRequest,
    "apply": ApplyRequest,
    "export": ExportRequest,
}
EXTRAS = {"config", "out", "screenshot"}  # what a command adds to its request's settings


def _click_command(name: str):
    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_of_a_request_command_is_a_declared_setting(name):
    command, declared = _click_command(name), settings_of(COMMANDS[name])
    params = {p.name: p for p in command.params if p.name not in EXTRAS}
    assert set(params) == set(declared), f"{name}: options and settings differ"
    options = {n: p for n, p in params.items() if p.param_type_name == "option"}  # typer brings its own click
    assert set(params) - set(options) <= {"model", "delta"}  # the positional arguments
    for field_name, param in options.items():
        field, setting, _ = declared[field_name]
        assert flag_of(field_name, setting) in param.opts
        assert setting.help in param.help
        if not param.multiple and shown_default(field, setting) is not None:
            assert param.default == shown_default(field, setting)


def test_the_edit_methods_registry_makes_the_edit_commands():
    assert {m.command for m in EDIT_METHODS.values()} <= set(typer.main.get_command(app).commands)
    assert {m.request for m in EDIT_METHODS.values()} == {EditRequest, NeuronRequest, ContextEmbedderRequest}
    assert [m.name for m in EDIT_METHODS.values() if not m.layered] == ["uce-context"]


def test_every_widget_of_the_web_app_is_a_declared_setting():
    pytest.importorskip("gradio", reason="the web app needs gradio (pip install -e '.[test]' or '.[ui]')")
    from locoedit.web.app import build_app
    from locoedit.web.workbench import Workbench

    blocks = build_app(Workbench("unused"), "toyworld")
    ids = [block.elem_id for block in blocks.blocks.values() if getattr(block, "elem_id", None)]
    assert len(ids) == len(set(ids)), "two widgets share an id"

    def settings_in(prefix):
        return {i.removeprefix(prefix + "-").replace("-", "_") for i in ids if i.startswith(prefix + "-")}

    widgets = {"out", "run", "open", "open_folder", "method", "kohya", "peft"}
    edit_settings = set().union(*(settings_of(m.request) for m in EDIT_METHODS.values() if m.layered))
    assert settings_in("l") - widgets == set(settings_of(LocalizationRequest)) - {"model"}
    assert settings_in("e") - widgets == edit_settings - {"model"}
    assert settings_in("v") - widgets == set(settings_of(EvaluationRequest)) - {"model"}


def test_web_forms_read_like_the_command_line():
    pytest.importorskip("gradio", reason="the web app needs gradio")
    from locoedit.web.forms import DEFAULT_CHOICE, given_values

    names = ["concepts", "layers", "lambda_key", "token", "auto_seeds", "preserve"]
    values = [" circle \n\n", "2,3", 0.1, DEFAULT_CHOICE, "0-3", ""]  # default lambda, token, seeds, no preserve
    assert given_values(EditRequest, names, values) == {"concepts": ("circle",), "layers": (2, 3)}
    assert given_values(EditRequest, ["auto_seeds", "lambda_key"], ["0,5", 0.3]) == {
        "auto_seeds": (0, 5),
        "lambda_key": 0.3,
    }


def _toy_copy(tmp_path, presets):
    from locoedit.toyworld import MODEL_DIR

    folder = tmp_path / "toy"
    shutil.copytree(MODEL_DIR, folder)
    settings = json.loads((folder / "locoedit.json").read_text())
    (folder / "locoedit.json").write_text(json.dumps({**settings, "presets": presets}))
    return str(folder)


def test_command_line_over_config_over_presets_over_defaults(tmp_path):
    model = _toy_copy(tmp_path, {"edit": {"lambda-key": 0.5, "lambda_value": 0.6, "preserve_general": 7.0}})
    config = tmp_path / "edit.toml"
    config.write_text('lambda_value = 0.7\nlayers = "2,3"\nconcepts = ["circle"]\ntargets = ["square"]\n')
    request = request_for(EditRequest, "edit", {"model": model, "preserve_general": 1.0}, config)
    assert (request.lambda_key, request.lambda_value, request.preserve_general) == (0.5, 0.7, 1.0)
    assert request.layers == (2, 3) and request.concepts == ("circle",)
    assert request.preserve_neighbours == 3.0  # the default
    json_config = tmp_path / "edit.json"
    json_config.write_text(json.dumps({"concepts": ["circle"], "targets": ["square"], "auto_seeds": "0-1"}))
    assert request_for(EditRequest, "edit", {"model": "toyworld"}, json_config).auto_seeds == (0, 1)


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (
            '{"lamda_key": 1}',
            ".json",
            "sets 'lamda_key', which is no setting of this command; did you mean 'lambda_key'",
        ),
        ("lambda_key = ", ".toml", "is not valid TOML"),
        ("[1, 2]", ".json", "must hold an object of settings"),
        ('{"lambda_key": -1}', ".json", "lambda_key must be a finite number > 0"),
        ("{}", ".yaml", "must end in .json or .toml"),
    ],
)
def test_a_bad_config_file_is_one_line_and_nothing_is_written(tmp_path, content, suffix, message):
    config = tmp_path / f"settings{suffix}"
    config.write_text(content)
    out = tmp_path / "edit.safetensors"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locoedit",
            "edit",
            "toyworld",
            "--concept",
            "circle",
            "--target",
            "square",
            "--config",
            str(config),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()


def test_a_preset_naming_an_unknown_setting_is_refused(tmp_path):
    model = _toy_copy(tmp_path, {"edit": {"strength": 0.5}})
    with pytest.raises(LocoeditError, match="presets for edit sets 'strength', which is no setting"):
        request_for(EditRequest, "edit", {"model": model, "concepts": ("circle",), "targets": ("square",)})


def test_the_neuron_edits_fit_lambda_is_an_option_now():
    with pytest.raises(LocoeditError, match=r"fit_lambda must be a finite number > 0.*--fit-lambda"):
        NeuronRequest(model="toyworld", concepts=("circle",), targets=("square",), fit_lambda=0)
    assert any("--fit-lambda" in p.opts for p in _click_command("neurons").params)
