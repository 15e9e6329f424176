"""LocoGen shared by two processes under `accelerate launch`: the same sweep as one process, and a run whose process
dies resumes without redoing the windows it finished."""

import json
from pathlib import Path

import pytest

from locoedit.localize import LocalizationRequest, localize
from locoedit.scoring import PixelScorer
from tests.distributed.launch import launch

PROMPTS = ("a house in the style of van gogh", "a dog in the style of van gogh")
TARGETS = ("a house", "a dog")
# 7 layers: 6 windows of 2, three per process, two per denoising loop.
ARGUMENTS = [
    "--prompt",
    PROMPTS[0],
    "--target",
    TARGETS[0],
    "--prompt",
    PROMPTS[1],
    "--target",
    TARGETS[1],
    "--scorer",
    "pixel",
    "--window",
    "2",
    "--seeds",
    "0-1",
    "--steps",
    "3",
    "--chunk",
    "2",
    "--device",
    "cpu",
]


def request(model: Path) -> LocalizationRequest:
    return LocalizationRequest(
        model=str(model),
        prompts=PROMPTS,
        targets=TARGETS,
        scorer="pixel",
        window=2,
        seeds=(0, 1),
        steps=3,
        chunk=2,
        device="cpu",
    )


@pytest.fixture(scope="module")
def alone(tiny_sd_folder, tmp_path_factory):
    """The sweep in this one process."""
    return localize(request(tiny_sd_folder), tmp_path_factory.mktemp("alone") / "run")


def assert_same_sweep(folder: Path, alone):
    shared = json.loads((folder / "localization.json").read_text())
    assert shared["timings"]["processes"] == 2
    assert shared["timings"]["denoiser_calls"] == alone.timings["denoiser_calls"]  # no window done twice
    assert [w["layers"] for w in shared["windows"]] == [w.layers for w in alone.windows]
    for window, reference in zip(shared["windows"], alone.windows):
        assert window["effects"] == pytest.approx(reference.effects, abs=1e-6), window["layers"]
        assert window["effect"] == pytest.approx(reference.effect, abs=1e-6)
        assert all((folder / path).is_file() for path in window["images"])
    assert shared["full_swap_effect"] == pytest.approx(alone.full_swap_effect, abs=1e-6)
    assert shared["chosen"]["layers"] == alone.chosen.layers
    assert sorted(alone.to_json()) == sorted(shared)
    assert not list(folder.rglob("*.tmp"))


@pytest.mark.slow
def test_two_processes_give_the_sweep_of_one(tiny_sd_folder, alone, tmp_path):
    done = launch(["localize", str(tiny_sd_folder), *ARGUMENTS, "--out", str(tmp_path / "run")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_sweep(tmp_path / "run", alone)
    assert done.stdout.count("<- chosen") == 1  # the main process reports; the other stays quiet


@pytest.mark.slow
def test_a_run_whose_process_dies_resumes_without_redoing_finished_windows(tiny_sd_folder, alone, tmp_path):
    out = tmp_path / "run"
    command = ["localize", str(tiny_sd_folder), *ARGUMENTS, "--out", str(out)]
    died = launch(command, script="tests/distributed/exit_after_windows.py", extra_env={"LOCOEDIT_TEST_EXIT": "1:1"})
    assert died.returncode != 0
    finished = {path: path.stat() for path in (out / "progress").glob("window_*.json")}
    assert 1 <= len(finished) < 6 and not (out / "localization.json").exists()

    done = launch(command)
    assert done.returncode == 0, done.stderr[-3000:]
    for path, before in finished.items():  # not written again: the same file, untouched
        after = path.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), path.name
    assert len(list((out / "progress").glob("window_*.json"))) == 6
    resumed = json.loads((out / "localization.json").read_text())
    assert resumed["timings"]["denoiser_calls"] < alone.timings["denoiser_calls"]  # only what was left
    for window, reference in zip(resumed["windows"], alone.windows):
        assert window["effects"] == pytest.approx(reference.effects, abs=1e-6), window["layers"]
    assert resumed["chosen"]["layers"] == alone.chosen.layers


def test_a_shared_run_needs_a_folder(tiny_adapters):
    from locoedit.core.errors import LocoeditError
    from locoedit.core.processes import Processes

    with pytest.raises(LocoeditError, match="shared by 2 processes needs an output folder"):
        localize(request(Path("tiny")), None, tiny_adapters["sd"], PixelScorer(), processes=Processes(0, 2, None))
