"""Target adoption (does an edited image show the edit's target, not only lack the concept?) and look-alikes (prompts
entangled with the concept that must keep their look): read by the toy world's probe on images drawn by the toy world
itself (ground truth), counted on hand-built items, and refused in one line when a suite names what the scorer cannot
read."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

from locoedit.delta.file import EditDelta
from locoedit.evaluate.evaluation import edit_target
from locoedit.evaluate.result import ConceptMetrics, EvaluationItem, _retention
from locoedit.evaluate.suite import EvaluationSuite
from locoedit.scoring import ToyworldScorer
from locoedit.toyworld import render


def images(*captions: str) -> torch.Tensor:  # [N, 3, H, W] in [0, 1]
    return torch.stack(
        [torch.from_numpy(render(c, seed=i)).permute(2, 0, 1).float() / 255 for i, c in enumerate(captions)]
    )


@pytest.fixture(scope="module")
def probe():
    return ToyworldScorer()


def test_the_probe_reads_every_attribute_a_target_states(probe):
    drawn = images(
        "a yellow dotted circle on black",
        "a yellow plain circle on black",
        "a red square on white",
        "a yellow plain circle on gray",
    )
    assert probe.adopts(drawn, "a yellow dotted circle", "the ocean") == [True, False, False, False]
    assert probe.adopts(drawn, "square", "circle") == [False, False, True, False]
    assert probe.adopts(drawn, "the sun", "the flag") == [False, True, False, True]  # a fact target: its look


def test_targets_the_scorer_cannot_read_are_not_measured(probe):
    assert probe.reads_target("a blue striped square") and probe.reads_target("in the style of klimt")
    assert not probe.reads_target("a painting") and not probe.reads_target("")

    def delta(targets):
        return EditDelta({}, {}, "f", "toyworld", "locoedit", [], {"targets": targets})

    assert edit_target(delta(["square"]), probe) == "square"
    assert edit_target(delta(["square", "square"]), probe) == "square"  # one target for several concepts
    assert edit_target(delta([""]), probe) is None  # a removal has no target to show
    assert edit_target(delta(["square", "cross"]), probe) is None  # several targets: not one figure
    assert edit_target(delta(["a painting"]), probe) is None


def _item(adopted_before, adopted_after):
    return EvaluationItem(
        "concept",
        0,
        0,
        "a red circle",
        "circle",
        0,
        "b.png",
        "a.png",
        0.9,
        0.1,
        1.0,
        30.0,
        adopted_before=adopted_before,
        adopted_after=adopted_after,
    )


def test_adoption_is_the_share_of_concept_images_showing_the_target():
    metrics = ConceptMetrics.of([_item(False, True), _item(False, True), _item(False, False), _item(True, True)], 0.5)
    assert (metrics.adopted_before, metrics.adopted_after) == (0.25, 0.75)
    unmeasured = ConceptMetrics.of([_item(None, None)], 0.5)
    assert unmeasured.adopted_after is None and unmeasured.adopted_before is None


def test_lookalike_retention_is_after_over_before():
    def item(before, after):
        return EvaluationItem(
            "lookalikes",
            0,
            0,
            "the sun",
            "the sun",
            0,
            "b",
            "a",
            0.9,
            0.9,
            1.0,
            30.0,
            follows_before=before,
            follows_after=after,
        )

    assert _retention([item(True, True), item(True, False), item(False, True), item(True, True)]) == 1.0
    assert _retention([item(True, False), item(True, True)]) == 0.5
    assert _retention([]) is None and _retention([item(False, False)]) is None


def test_suites_carry_lookalikes_in_both_splits():
    suite = EvaluationSuite.load("toyworld-fact-sun")
    assert suite.lookalikes and "circle" in suite.concepts
    test, validation = suite.split("test"), suite.split("validation")
    groups = {i.group for i in test.items()}
    assert "lookalikes" in groups and {i.group for i in validation.items()} >= {"lookalikes"}
    assert {p for s in test.lookalikes for p in s.prompts}.isdisjoint(
        p for s in validation.lookalikes for p in s.prompts
    )


def test_a_lookalike_naming_an_unknown_attribute_is_one_line_and_writes_nothing(tmp_path):
    data = EvaluationSuite.load("toyworld-object-circle").split("test").to_json()
    data["lookalikes"] = [{"concept": "purple", "prompts": ["a purple circle on black"]}]
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps(data))
    delta = Path(__file__).resolve().parents[1] / "data" / "v0.1" / "edit.safetensors"
    out = tmp_path / "eval"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locoedit",
            "evaluate",
            "toyworld",
            "--edit",
            str(delta),
            "--suite",
            str(suite),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "unknown concept 'purple'" in result.stderr
    assert not out.exists()
