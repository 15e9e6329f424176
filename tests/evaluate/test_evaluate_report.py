"""The evaluation report in headless Chromium: it renders, every image loads, no link is broken; a screenshot stays.

Needs Debian's ``chromium`` (CI: ``apt-get install -y --no-install-recommends chromium``); skipped with that
reason where it is missing.
"""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from PIL import Image

from locoedit.edit import EditRequest, compute_edit
from locoedit.evaluate import EvaluationSuite, effect_curve, evaluate
from locoedit.localize import LocalizationRequest, LocalizationResult, localize
from locoedit.models import GenerationSettings, adapter_for
from locoedit.report.browser import check_page, find_chromium
from locoedit.scoring import PixelScorer
from locoedit.testing import TINY_PIPELINES

from .test_evaluate import SUITE, ControlledScorer

SETTINGS = GenerationSettings(num_inference_steps=2, guidance_scale=7.5, height=16, width=16)


@pytest.fixture(scope="module")
def chromium():
    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y --no-install-recommends chromium)")
    return binary


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    """A LocoGen run, an edit of the layers it chose (--layers RUN_FOLDER), and its evaluation folder."""
    adapter = adapter_for(TINY_PIPELINES["sd"](tmp_path_factory.mktemp("sd")))
    run_dir = tmp_path_factory.mktemp("localization")
    localize(
        LocalizationRequest(
            model="tiny-sd",
            prompts=("a house in the style of van gogh",),
            targets=("a house",),
            scorer="pixel",
            window=2,
            seeds=(0,),
            steps=2,
            height=16,
            width=16,
        ),
        out=run_dir,
        adapter=adapter,
        scorer=PixelScorer(),
    )
    delta = compute_edit(
        adapter,
        EditRequest(
            model="tiny-sd", concepts=("van gogh",), targets=("a painting",), kind="style", layers=str(run_dir)
        ),
    )
    out = tmp_path_factory.mktemp("evaluation")
    result = evaluate(adapter, delta, EvaluationSuite.from_json(SUITE), ControlledScorer(), out=out, settings=SETTINGS)
    return result, out, run_dir


def test_the_localization_the_delta_came_from_is_in_the_result(evaluation):
    result, out, run_dir = evaluation
    chosen = json.loads((run_dir / "localization.json").read_text())["chosen"]["layers"]
    assert result.localization.chosen == chosen
    assert [layer["index"] for layer in result.delta.layers] == chosen
    assert len(result.localization.windows) == result.localization.num_layers - 1
    assert json.loads((out / "evaluation.json").read_text())["localization"]["chosen"] == chosen
    full = LocalizationResult.load(run_dir)
    assert effect_curve(full) == replace(effect_curve(run_dir), source="the given localization")
    assert effect_curve(result.localization) is result.localization


def test_report_renders_in_chromium_with_every_image_and_link(chromium, evaluation):
    result, out, _ = evaluation
    check = check_page(out / "report.html", screenshot=out / "report.png", chromium=chromium)
    assert check.title == "Evaluation: tiny-van-gogh"
    assert check.images == 2 * len(result.items)  # a before and an after image per (prompt, seed)
    assert check.broken_images == [] and check.missing_references == []
    assert check.svgs == 1  # the per-layer effect curve
    html = (out / "report.html").read_text()
    for heading in (
        "Metrics",
        "Concept prompts (efficacy)",
        "Paraphrases (generalization)",
        "Neighbouring concepts (specificity)",
        "Unrelated prompts (specificity)",
        "effect per window",
    ):
        assert heading in html
    assert "href='evaluation.json'" in html
    screenshot = np.asarray(Image.open(out / "report.png").convert("RGB"))
    assert screenshot.shape[0] > 500 and screenshot.std() > 10, "the screenshot is blank"
    colours = screenshot.astype(np.int32) @ np.array([65536, 256, 1], dtype=np.int32)
    assert len(np.unique(colours)) > 100  # text, tables and image grids, not a flat page


def test_the_check_catches_a_missing_image(chromium, evaluation, tmp_path):
    _, out, _ = evaluation
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "report.html").write_text((out / "report.html").read_text())
    (copy / "evaluation.json").write_text("{}")
    first = json.loads((out / "evaluation.json").read_text())["items"][0]
    (copy / first["before"]).parent.mkdir(parents=True)
    (copy / first["before"]).write_bytes((out / first["before"]).read_bytes())
    check = check_page(copy / "report.html", chromium=chromium)
    assert not check.ok and first["before"] not in check.broken_images
    assert first["after"] in check.broken_images and first["after"] in check.missing_references
