"""What the web app does, without a browser, on the toy world: the strength slider's images, a model never left
edited after a failed job, and a core install that never imports Gradio."""

import subprocess
import sys

import pytest
import torch

from locoedit.core.errors import LocoeditError
from locoedit.edit import EditRequest
from locoedit.evaluate import EvaluationRequest
from locoedit.web.jobs import DONE, FAILED
from locoedit.web.workbench import Workbench
from locoedit.workflows.generate import generate_images
from locoedit.workflows.requests import GenerationRequest

IMAGES = GenerationRequest("toyworld", ("a red circle on black",), (0, 1), steps=4)


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    workbench = Workbench(runs)
    delta = workbench.edit(
        EditRequest(model="toyworld", concepts=("circle",), targets=("square",), layers=(2, 3, 4)),
        runs / "edit.safetensors",
    )
    return workbench, delta


def _weights(workbench):
    denoiser = workbench.adapter("toyworld", "float32", None).denoiser
    return {name: parameter.detach().clone() for name, parameter in denoiser.named_parameters()}


def test_the_strength_scales_the_edit_without_recomputing_it(edited):
    workbench, delta = edited
    before = workbench.generate(IMAGES)
    assert torch.equal(workbench.generate(IMAGES, delta, 0.0), before)  # 0: the original model
    full = workbench.generate(IMAGES, delta, 1.0)
    half = workbench.generate(IMAGES, delta, 0.5)
    assert (full - before).abs().max() > 0.1  # the edit changes the images
    assert (half - before).abs().max() > 0 and (half - full).abs().max() > 0
    with delta.apply(workbench.adapter("toyworld", "float32", None)):  # 1: exactly the edit
        assert torch.equal(generate_images(IMAGES, workbench.adapter("toyworld", "float32", None)), full)


def test_a_job_that_fails_while_the_edit_is_applied_leaves_the_model_as_it_was(edited):
    workbench, delta = edited
    original = _weights(workbench)

    def fail_on_step_two(event):
        if event.done == 2:
            raise OSError(28, "No space left on device", "/runs/x")

    with pytest.raises(OSError):
        workbench.generate(IMAGES, delta, 0.7, progress=fail_on_step_two)
    assert all(torch.equal(weight, original[name]) for name, weight in _weights(workbench).items())
    delta.check(workbench.adapter("toyworld", "float32", None))  # the checksums of the originals match again
    job = workbench.queue.snapshot()[-1]
    assert job.state == FAILED
    assert job.message == "error: No space left on device (/runs/x); free space or choose another place and rerun"
    workbench.generate(IMAGES)  # the model's queue is free again
    assert workbench.queue.snapshot()[-1].state == DONE


def test_bad_input_fails_before_any_job_touches_the_model(edited, tmp_path):
    workbench, _ = edited
    jobs = len(workbench.queue.snapshot())
    with pytest.raises(LocoeditError, match="does not exist"):
        workbench.evaluate(EvaluationRequest("toyworld", str(tmp_path / "missing.safetensors")), tmp_path / "eval")
    assert len(workbench.queue.snapshot()) == jobs


def test_fresh_folders_are_numbered_after_the_ones_that_exist(tmp_path):
    workbench = Workbench(tmp_path)
    assert workbench.fresh_folder("edit") == tmp_path / "edit-001"
    (tmp_path / "edit-001").mkdir()
    assert workbench.fresh_folder("edit") == tmp_path / "edit-002"


def test_the_command_line_does_not_import_gradio():
    code = "import sys, locoedit.cli.main; assert 'gradio' not in sys.modules, 'gradio imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
