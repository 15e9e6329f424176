"""locoedit.evaluate on a tiny random SD pipeline with a scorer the test controls; suites and bad input."""

import json
from dataclasses import replace

import pytest
import torch

torch.set_num_threads(1)

from typer.testing import CliRunner

from locoedit.core.errors import LocoeditError
from locoedit.core.formats import to_plain
from locoedit.delta.file import EditDelta, tensor_sha256
from locoedit.edit import EditRequest, compute_edit
from locoedit.evaluate import (
    EvaluationItem,
    EvaluationSuite,
    Metrics,
    evaluate,
    shipped_suites,
    suite_for_delta,
)
from locoedit.models import GenerationSettings, adapter_for
from locoedit.scoring import ConceptScorer, PixelScorer
from locoedit.testing import TINY_PIPELINES

SETTINGS = GenerationSettings(num_inference_steps=2, guidance_scale=7.5, height=16, width=16)
SUITE = {
    "name": "tiny-van-gogh",
    "kind": "style",
    "concept": "van gogh",
    "concept_prompts": ["a painting in the style of van gogh", "a house in the style of van gogh"],
    "paraphrases": ["a van gogh painting of a tree"],
    "neighbours": [
        {"concept": "monet", "prompts": ["a house in the style of monet"]},
        {"concept": "picasso", "prompts": ["a dog in the style of picasso"]},
    ],
    "unrelated": ["a photo of a dog", {"concept": "red", "prompts": ["a red car"]}],
    "seeds": [0, 1],
}


class ControlledScorer(ConceptScorer):
    """Scores a concept as the mean of one colour channel (picked by the concept's length); reads two attributes."""

    spec = "controlled"
    feature_name = "2x2 pooled pixels"

    def __init__(self, threshold: float | None = 0.5):
        self.presence_threshold = threshold
        self.seen: list[str] = []

    def score(self, images, concept):
        self.seen.append(concept)
        return images[:, len(concept) % 3].flatten(1).mean(1)

    def predict(self, images):
        return [
            {"bright": str(bool(im.mean() > 0.5)), "reddish": str(bool(im[0].mean() > im[1].mean()))} for im in images
        ]

    def concept_attributes(self, concept):
        return {"bright"}

    def follows(self, images, prompts, concepts, candidates):  # "shows its prompt": the reddish ones
        return [attributes["reddish"] == "True" for attributes in self.predict(images)]

    def features(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return adapter_for(TINY_PIPELINES["sd"](tmp_path_factory.mktemp("sd")))


@pytest.fixture(scope="module")
def delta(adapter):
    request = EditRequest(
        model="tiny-sd",
        concepts=("van gogh",),
        targets=("a painting",),
        kind="style",
        layers=(1, 2),
        lambda_key=0.01,
        lambda_value=0.01,
    )
    return compute_edit(adapter, request)


@pytest.fixture(scope="module")
def suite():
    return EvaluationSuite.from_json(SUITE)


def _weights(adapter) -> dict[str, str]:
    return {name: tensor_sha256(p) for name, p in adapter.denoiser.named_parameters()}


@pytest.fixture(scope="module")
def result(adapter, delta, suite, tmp_path_factory):
    before = _weights(adapter)
    out = tmp_path_factory.mktemp("evaluation")
    result = evaluate(adapter, delta, suite, ControlledScorer(), out=out, settings=SETTINGS, batch_size=5)
    assert _weights(adapter) == before, "evaluate must leave the model exactly as it found it"
    return result, out


def test_before_and_after_are_the_unedited_and_edited_model_with_the_same_seeds(adapter, delta, result):
    result, _ = result
    prompts = [item.prompt for item in result.items]
    seeds = [item.seed for item in result.items]
    encoded = adapter.encode(prompts)
    assert torch.allclose(result.before, adapter.generate(encoded, seeds, SETTINGS), atol=1e-5)
    with delta.apply(adapter):
        assert torch.allclose(result.after, adapter.generate(encoded, seeds, SETTINGS), atol=1e-5)
    concept = torch.tensor([item.group == "concept" for item in result.items])
    assert not torch.equal(result.before[concept], result.after[concept]), "the edit changes the concept's images"


def test_items_metrics_and_files(result):
    result, out = result
    groups = [item.group for item in result.items]
    assert groups.count("concept") == 4 and groups.count("paraphrases") == 2
    assert groups.count("neighbours") == 4 and groups.count("unrelated") == 4
    unrelated = [item for item in result.items if item.group == "unrelated"]
    assert {item.concept for item in unrelated} == {"a photo of a dog", "red"}  # a plain prompt scores itself
    scorer = ControlledScorer()
    for item, before, after in zip(result.items, result.before, result.after):
        assert item.score_before == pytest.approx(scorer.score(before[None], item.concept).item(), abs=1e-6)
        assert item.score_after == pytest.approx(scorer.score(after[None], item.concept).item(), abs=1e-6)
        assert (out / item.before).is_file() and (out / item.after).is_file()
    metrics = result.metrics
    efficacy = metrics.efficacy
    concept_items = [i for i in result.items if i.group == "concept"]
    assert efficacy.score.after == pytest.approx(sum(i.score_after for i in concept_items) / 4)
    assert efficacy.rate == efficacy.absent_after == sum(i.score_after < 0.5 for i in concept_items) / 4
    specificity = metrics.specificity
    assert 0 < specificity.ssim <= 1 and specificity.psnr > 0
    assert [s.concept for s in specificity.neighbours.sets] == ["monet", "picasso"]
    assert specificity.other_attributes.ignored == ["bright"]
    assert metrics.quality.frechet_distance >= 0 and metrics.quality.inception_fid is None
    data = json.loads((out / "evaluation.json").read_text())
    assert data["format"] == "locoedit.evaluation/1" and data["headline"] == to_plain(result.headline)
    assert data["suite"] == to_plain(result.suite) and data["delta"]["layers"] == result.delta.layers
    assert (out / "report.html").is_file()


def test_an_identity_delta_changes_nothing(adapter, delta, suite):
    names = dict(adapter.denoiser.named_parameters())
    identity = replace(delta, tensors={name: names[name].detach().clone() for name in delta.parameters}, factors={})
    result = evaluate(adapter, identity, suite, ControlledScorer(), settings=SETTINGS)
    assert torch.equal(result.before, result.after)
    headline = result.headline
    assert headline.specificity == 1.0 and headline.identity == 1.0 and headline.other_attributes == 1.0
    assert headline.ssim == pytest.approx(1.0) and headline.psnr == 100.0
    assert headline.frechet_distance == pytest.approx(0.0, abs=1e-9)
    assert result.metrics.efficacy.absent_before == result.metrics.efficacy.absent_after


def test_evaluating_twice_on_one_adapter_gives_the_same_result(adapter, delta, suite, result):
    again = evaluate(adapter, delta, suite, ControlledScorer(), settings=SETTINGS, batch_size=64)
    assert torch.allclose(again.before, result[0].before, atol=1e-5)
    assert torch.allclose(again.after, result[0].after, atol=1e-5)


def test_the_delta_is_reverted_when_generation_fails(adapter, delta, suite):
    before = _weights(adapter)
    calls = {"n": 0}
    original = adapter.generate

    def generate_then_fail(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:  # the first loop is "before"; fail during "after", with the delta applied
            raise RuntimeError("boom")
        return original(*args, **kwargs)

    adapter.generate = generate_then_fail
    try:
        with pytest.raises(RuntimeError, match="boom"):
            evaluate(adapter, delta, suite, ControlledScorer(), settings=SETTINGS, batch_size=64)
    finally:
        del adapter.generate
    assert _weights(adapter) == before


def test_rates_from_hand_made_items():
    def item(
        group, before, after, attrs_before=("a", "x"), attrs_after=("a", "x"), follows=(None, None), attributes=True
    ):
        return EvaluationItem(
            group,
            0,
            0,
            "p",
            "c",
            0,
            "b.png",
            "a.png",
            before,
            after,
            1.0,
            50.0,
            {"bright": attrs_before[0], "reddish": attrs_before[1]} if attributes else None,
            {"bright": attrs_after[0], "reddish": attrs_after[1]} if attributes else None,
            *follows,
        )

    rows = [
        ("concept", 0.9, 0.1, ("a", "x"), ("b", "x")),  # removed; only the concept's attribute changed
        ("concept", 0.9, 0.8, ("a", "x"), ("a", "y")),  # still there; another attribute changed
        ("concept", 0.2, 0.1),  # absent before and after
        ("concept", 0.9, 0.3),  # removed
        ("paraphrases", 0.9, 0.6),
        ("paraphrases", 0.9, 0.2),
        ("neighbours", 0.9, 0.9, ("a", "x"), ("a", "x"), (True, True)),
        ("neighbours", 0.9, 0.9, ("a", "x"), ("a", "y"), (True, False)),  # a neighbour changed, no longer as asked
        ("unrelated", 0.1, 0.1, ("a", "x"), ("a", "x"), (True, True)),
        ("unrelated", 0.1, 0.1, ("a", "x"), ("a", "x"), (False, False)),  # never showed its prompt
    ]
    metrics = Metrics.of([item(*row) for row in rows], ControlledScorer(0.5), "c", None)
    assert metrics.efficacy.absent_before == 0.25 and metrics.efficacy.rate == 0.75
    assert metrics.generalization.rate == 0.5
    specificity = metrics.specificity
    assert (specificity.follows_before, specificity.follows_after) == (0.75, 0.5)
    assert specificity.rate == pytest.approx(2 / 3)  # relative to before: the one never right does not count against
    assert specificity.identity == 0.75 and specificity.neighbours.attributes_unchanged == 0.5
    other = metrics.specificity.other_attributes
    assert other.rate == 5 / 6 and other.per_attribute == {"reddish": 5 / 6}
    assert metrics.quality.frechet_distance is None
    # Without predict and without a threshold only the means are reported.
    plain = [item(*row[:3], attributes=False) for row in rows]
    metrics = Metrics.of(plain, ControlledScorer(None), "c", None)
    assert metrics.efficacy.rate is None and metrics.specificity.rate is None and metrics.specificity.identity is None
    assert metrics.efficacy.score.before == pytest.approx((0.9 * 3 + 0.2) / 4)


# ---------------------------------------------------------------------------------------------------- suites


def test_shipped_suites_load_and_cover_every_kind():
    suites = {name: EvaluationSuite.load(name) for name in shipped_suites()}
    assert {
        "toyworld-style-kandinsky",
        "toyworld-object-circle",
        "toyworld-fact-sun",
        "sd-style-van-gogh",
        "sd-object-snoopy",
        "sd-fact-british-monarch",
    } <= set(suites)
    for prefix in ("toyworld-", "sd-"):
        assert {s.kind for n, s in suites.items() if n.startswith(prefix)} == {"style", "object", "fact"}
    for name, suite in suites.items():
        assert suite.name == name and suite.paraphrases and suite.neighbours and suite.unrelated
        assert EvaluationSuite.from_json(json.loads(json.dumps(suite.to_json()))) == suite


def test_a_suite_file_loads_by_path(tmp_path):
    file = tmp_path / "mine.json"
    file.write_text(json.dumps(SUITE))
    assert EvaluationSuite.load(file) == EvaluationSuite.from_json(SUITE)


def test_the_suite_for_a_delta_is_found_by_its_concept(delta):
    assert suite_for_delta(delta, "some/sd-model").name == "sd-style-van-gogh"
    snoopy = replace(delta, settings={**delta.settings, "concepts": ["Snoopy"], "kind": "object"})
    assert suite_for_delta(snoopy, "some/sd-model").name == "sd-object-snoopy"
    kandinsky = replace(delta, settings={**delta.settings, "concepts": ["in the style of kandinsky"]})
    assert suite_for_delta(kandinsky, "toyworld").name == "toyworld-style-kandinsky"
    assert (
        suite_for_delta(replace(delta, settings={**delta.settings, "concepts": ["the sun"]}), "toyworld").kind == "fact"
    )
    styles = ["in the style of kandinsky", "in the style of hokusai", "in the style of klimt"]
    assert (
        suite_for_delta(replace(delta, settings={**delta.settings, "concepts": styles}), "toyworld").name
        == "toyworld-style-all"
    )  # the suite written for exactly these concepts together
    unknown = replace(delta, settings={**delta.settings, "concepts": ["a teapot"]})
    with pytest.raises(LocoeditError, match="no single shipped suite fits this edit.*pass --suite"):
        suite_for_delta(unknown, "some/sd-model")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"drop": ["concept_prompts", "seeds"]}, "lacks the field(s) concept_prompts, seeds; a suite needs name, kind"),
        ({"drop": ["neighbours"]}, "lacks the field(s) neighbours"),
        ({"set": {"colour": "red"}}, "unknown field(s) colour"),
        ({"set": {"kind": "animal"}}, "kind is 'animal'; use one of style, object, fact"),
        ({"set": {"concept_prompts": []}}, "concept_prompts is empty"),
        ({"set": {"concept_prompts": "a dog"}}, "concept_prompts must be a list"),
        ({"set": {"neighbours": [{"prompts": ["a cat"]}]}}, "neighbours[0] lacks concept"),
        ({"set": {"neighbours": [], "unrelated": []}}, "specificity cannot be measured"),
        ({"set": {"seeds": [0, -1]}}, "suite field seeds holds -1; seeds must be between 0 and"),
        ({"set": {"seeds": [0, 0]}}, "suite field seeds repeats [0]"),
        ({"set": {"steps": 0}}, "steps must be a positive integer"),
    ],
)
def test_bad_suite_files_are_explained(tmp_path, change, message):
    data = {k: v for k, v in SUITE.items() if k not in change.get("drop", [])}
    data.update(change.get("set", {}))
    file = tmp_path / "bad.json"
    file.write_text(json.dumps(data))
    with pytest.raises(LocoeditError) as error:
        EvaluationSuite.load(file)
    assert message in str(error.value) and str(file) in str(error.value)


VALIDATION = {
    "concept_prompts": ["a tree in the style of van gogh"],
    "paraphrases": [],
    "neighbours": [{"concept": "monet", "prompts": ["a tree in the style of monet"]}],
    "unrelated": [],
    "seeds": [7],
}


def test_a_suite_has_a_validation_split_apart_from_its_test_split():
    suite = EvaluationSuite.from_json({**SUITE, "validation": VALIDATION})
    validation, test = suite.split("validation"), suite.split("test")
    assert [(i.prompt, i.seed) for i in validation.items()] == [
        ("a tree in the style of van gogh", 7),
        ("a tree in the style of monet", 7),
    ]
    assert test.items() == EvaluationSuite.from_json(SUITE).items()  # the suite's own fields are its test split
    assert EvaluationSuite.from_json(json.loads(json.dumps(suite.to_json()))) == suite
    for name in (
        "toyworld-style-kandinsky",
        "toyworld-object-circle",
        "toyworld-fact-sun",
        "toyworld-color-red",
        "toyworld-style-hokusai",
        "toyworld-style-klimt",
        "toyworld-style-all",
    ):
        assert EvaluationSuite.load(name).split("validation").items()
    with pytest.raises(LocoeditError, match="suite 'tiny-van-gogh' has no validation split, so settings cannot be"):
        EvaluationSuite.from_json(SUITE).split("validation")  # suites from before splits: all test, still loading


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seeds": [0]}, r"suite seeds \[0\] are in both the validation and the test split; the splits need disjoint"),
        ({"concept_prompts": ["a house in the style of van gogh"]}, "are in both the validation and the test split"),
        ({"neighbours": [], "unrelated": []}, "validation has no neighbours and no unrelated prompts"),
        ({"colour": "red"}, "validation has unknown fields colour"),
    ],
)
def test_bad_validation_splits_are_explained(change, message):
    with pytest.raises(LocoeditError, match=message):
        EvaluationSuite.from_json({**SUITE, "validation": {**VALIDATION, **change}})


def test_unknown_suite_names_and_missing_files_are_explained(tmp_path):
    with pytest.raises(
        LocoeditError, match="unknown suite 'toyworld-style-monet'; shipped suites: .*toyworld-fact-sun"
    ):
        EvaluationSuite.load("toyworld-style-monet")
    with pytest.raises(LocoeditError, match="does not exist"):
        EvaluationSuite.load(tmp_path / "nothing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(LocoeditError, match="not valid JSON"):
        EvaluationSuite.load(tmp_path / "broken.json")


# ---------------------------------------------------------------------------------------------------- bad input


def test_a_delta_for_another_model_is_refused_before_anything_is_generated(adapter, suite, tmp_path):
    other = adapter_for(TINY_PIPELINES["sd"](tmp_path / "other", seed=5))
    foreign = compute_edit(
        other, EditRequest(model="other", concepts=("van gogh",), targets=("a painting",), kind="style", layers=(1,))
    )
    scorer = ControlledScorer()
    with pytest.raises(LocoeditError, match="original matrix differs"):
        evaluate(adapter, foreign, suite, scorer, out=tmp_path / "out", settings=SETTINGS)
    assert not (tmp_path / "out").exists() and scorer.seen == []


def test_other_bad_input(adapter, delta, suite, tmp_path):
    with pytest.raises(LocoeditError, match="cannot score a concept in a single image"):
        evaluate(adapter, delta, suite, PixelScorer(), settings=SETTINGS)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(LocoeditError, match="not empty and holds no locoedit run"):
        evaluate(adapter, delta, suite, ControlledScorer(), out=tmp_path / "busy", settings=SETTINGS)

    class Picky(ControlledScorer):
        def check_concept(self, concept):
            if concept == "monet":
                raise LocoeditError("unknown concept 'monet'")

    with pytest.raises(LocoeditError, match="unknown concept 'monet'"):
        evaluate(adapter, delta, suite, Picky(), settings=SETTINGS)


# ---------------------------------------------------------------------------------------------------- CLI


def run(*args):
    from locoedit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_edit_then_evaluate_with_a_clip_folder(tiny_sd_folder, tiny_clip_folder, tmp_path):
    delta = tmp_path / "d.safetensors"
    assert (
        run(
            "edit",
            tiny_sd_folder,
            "--concept",
            "van gogh",
            "--target",
            "a painting",
            "--kind",
            "style",
            "--layers",
            "1,2",
            "--out",
            delta,
        ).exit_code
        == 0
    )
    suite_file = tmp_path / "suite.json"
    suite_file.write_text(json.dumps({**SUITE, "seeds": [0]}))
    out = tmp_path / "eval"
    from locoedit.report.browser import find_chromium

    screenshot = ["--screenshot"] if find_chromium() else []
    result = run(
        "evaluate",
        tiny_sd_folder,
        "--edit",
        delta,
        "--suite",
        suite_file,
        "--scorer",
        f"clip:{tiny_clip_folder}",
        "--steps",
        "2",
        "--size",
        "16",
        "--seeds",
        "0-1",
        "--out",
        out,
        *screenshot,
    )
    assert result.exit_code == 0, result.output
    assert "efficacy" in result.output and "wrote" in result.output
    if screenshot:
        assert "28 images, all load" in result.output and (out / "report.png").is_file()
    data = json.loads((out / "evaluation.json").read_text())
    assert data["suite"]["seeds"] == [0, 1] and data["settings"]["num_inference_steps"] == 2
    assert data["metrics"]["quality"]["features"] == "CLIP image embedding"
    assert data["metrics"]["quality"]["frechet_distance"] >= 0
    assert data["headline"]["efficacy"] is None  # CLIP cannot threshold presence: means only
    assert data["delta"]["path"] == str(delta)


def test_cli_bad_input_exits_2_with_one_clear_line(tiny_sd_folder, tmp_path):
    other = tmp_path / "other"
    TINY_PIPELINES["sd"](tmp_path / "tok", seed=5).save_pretrained(other)
    delta = tmp_path / "d.safetensors"
    assert run("edit", other, "--concept", "dog", "--target", "cat", "--layers", "1", "--out", delta).exit_code == 0
    suite_file = tmp_path / "suite.json"
    suite_file.write_text(json.dumps(SUITE))
    cases = [
        (["--suite", suite_file], "original matrix differs"),  # a delta for another model
        (["--suite", "no-such-suite"], "unknown suite 'no-such-suite'; shipped suites:"),
        ([], "no single shipped suite fits this edit"),  # concept 'dog' has no shipped suite
    ]
    fits = tmp_path / "fits.safetensors"
    assert (
        run("edit", tiny_sd_folder, "--concept", "dog", "--target", "cat", "--layers", "1", "--out", fits).exit_code
        == 0
    )
    cases.append((["--suite", suite_file, "--localization", tmp_path], "holds no localization.json"))
    cases.append((["--suite", suite_file, "--scorer", "pixel"], "cannot score a concept in a single image"))
    for args, message in cases:
        edit = fits if "--localization" in args or "pixel" in args else delta
        result = run("evaluate", tiny_sd_folder, "--edit", edit, "--out", tmp_path / "out", "--steps", "2", *args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in SUITE.items() if k != "paraphrases"}))
    result = run("evaluate", tiny_sd_folder, "--edit", delta, "--suite", bad, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "lacks the field(s) paraphrases" in result.output
    result = run("evaluate", tiny_sd_folder, "--edit", tmp_path / "missing.safetensors", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "out").exists()


def test_edit_delta_from_a_file_evaluates_like_the_computed_one(adapter, delta, suite, tmp_path):
    path = delta.save(tmp_path / "d.safetensors")
    loaded = EditDelta.load(path)
    a = evaluate(adapter, loaded, suite, ControlledScorer(), settings=SETTINGS)
    b = evaluate(adapter, delta, suite, ControlledScorer(), settings=SETTINGS)
    assert torch.equal(a.after, b.after)


def test_reusing_the_before_images_of_an_earlier_result(adapter, delta, suite, result):
    earlier, _ = result
    names = dict(adapter.denoiser.named_parameters())
    identity = replace(delta, tensors={name: names[name].detach().clone() for name in delta.parameters}, factors={})
    reused = evaluate(adapter, identity, suite, ControlledScorer(), settings=SETTINGS, reuse=earlier)
    assert reused.before is earlier.before
    assert torch.allclose(reused.after, earlier.before, atol=1e-5)  # the identity edit: after = unedited
    with pytest.raises(LocoeditError, match="reuse: the earlier result was generated from other prompts"):
        evaluate(adapter, delta, replace(suite, seeds=(0,)), ControlledScorer(), settings=SETTINGS, reuse=earlier)
    with pytest.raises(LocoeditError, match="other prompts, seeds or settings"):
        evaluate(
            adapter, delta, suite, ControlledScorer(), settings=replace(SETTINGS, guidance_scale=2.0), reuse=earlier
        )
