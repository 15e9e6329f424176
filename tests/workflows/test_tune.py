"""locoedit tune: the grid on the validation split, the choice rule, the test split for the choice only, bad input."""

import json

import pytest
import torch

torch.set_num_threads(1)

from locoedit.core.errors import LocoeditError
from locoedit.delta.file import EditDelta
from locoedit.evaluate.result import Headline
from locoedit.workflows import tune as tune_module
from locoedit.workflows.requests import TuneRequest
from locoedit.workflows.tune import TuneResult, Variant, choose, tune

SUITE = {
    "name": "tiny-toy-triangle",
    "kind": "object",
    "concept": "triangle",
    "edit_concept": "triangle",
    "model": "toyworld",
    "scorer": "toyworld",
    "steps": 6,
    "concept_prompts": ["a red triangle on black"],
    "paraphrases": [],
    "neighbours": [{"concept": "circle", "prompts": ["a blue circle on white"]}],
    "unrelated": [],
    "seeds": [0],
    "validation": {
        "concept_prompts": ["a green triangle on gray"],
        "paraphrases": [],
        "neighbours": [{"concept": "square", "prompts": ["a yellow square on black"]}],
        "unrelated": [],
        "seeds": [5],
    },
}


def headline(efficacy, specificity, identity=0.5):
    return Headline(efficacy, None, specificity, identity, None, 1.0, 0.0, 1.0, 30.0, None)


def variant(index, efficacy, specificity, identity=0.5):
    return Variant(index, [2, 3], "from-concept", 3.0, 3.0, 0.1, headline(efficacy, specificity, identity))


def test_the_rule_puts_efficacy_first_then_specificity_then_identity_then_grid_order():
    assert choose([variant(0, 1.0, 0.80), variant(1, 0.97, 0.99), variant(2, 0.90, 1.0)]).index == 1  # 0.97 ties 1.0
    assert choose([variant(0, 0.5, 1.0), variant(1, 0.7, 0.5)]).index == 1  # below the tie, efficacy decides
    assert choose([variant(0, 1.0, 0.9, 0.7), variant(1, 1.0, 0.9, 0.8)]).index == 1
    assert choose([variant(0, 1.0, 0.9), variant(1, 1.0, 0.9)]).index == 0


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("suite") / "suite.json"
    path.write_text(json.dumps(SUITE))
    return path


def small(suite_file, **overrides):
    base = dict(
        model="toyworld",
        concepts=("triangle",),
        targets=("cross",),
        suite=str(suite_file),
        windows=1,
        tokens=("from-concept",),
        preserve_neighbours=(3.0,),
        preserve_general=(3.0,),
        lambdas=(0.1, 1.0),
        localize_seeds=(0,),
    )
    return TuneRequest(**{**base, **overrides})


def test_tune_chooses_on_validation_and_reports_the_choice_on_test(suite_file, tmp_path, monkeypatch):
    evaluated = []
    real_evaluate = tune_module.evaluate

    def recording(adapter, delta, suite, *args, **kwargs):
        evaluated.append(suite.name)
        return real_evaluate(adapter, delta, suite, *args, **kwargs)

    monkeypatch.setattr(tune_module, "evaluate", recording)
    result = tune(small(suite_file), tmp_path / "tune")
    assert evaluated == ["tiny-toy-triangle:validation"] * 2 + ["tiny-toy-triangle"]  # the choice alone sees test
    assert len(result.variants) == 2 and result.chosen == choose(result.variants).index
    assert TuneResult.read(tmp_path / "tune" / "tune.json") == result
    delta = EditDelta.load(tmp_path / "tune" / "edit.safetensors")
    chosen = result.variants[result.chosen]
    assert [layer["index"] for layer in delta.layers] == chosen.layers
    assert delta.settings["lambda_key"] == chosen.lam
    report = (tmp_path / "tune" / "report.html").read_text()
    assert "test/report.html" in report and "class=chosen" in report
    assert (tmp_path / "tune" / "test" / "evaluation.json").is_file()

    # Rerunning the same tune resumes: every variant is read back, none is computed again.
    monkeypatch.setattr(tune_module, "compute_edit", _counting(tune_module.compute_edit, calls := []))
    again = tune(small(suite_file), tmp_path / "tune")
    assert again.variants == result.variants and len(calls) == 1  # only the chosen delta, to write it


def _counting(function, calls):
    def counted(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    return counted


def test_bad_tunes_get_one_line_and_write_nothing(suite_file, tmp_path):
    with pytest.raises(LocoeditError, match="the grid has 480 variants, more than 200; give fewer values"):
        small(
            suite_file,
            windows=10,
            tokens=("from-concept", "all", "eos", "last-subject"),
            preserve_neighbours=(1.0, 3.0, 10.0),
            preserve_general=(1.0, 3.0),
        )
    with pytest.raises(LocoeditError, match="lambdas is empty"):
        small(suite_file, lambdas=())
    with pytest.raises(LocoeditError, match=r"tokens \['first'\] are unknown"):
        small(suite_file, tokens=("first",))
    with pytest.raises(LocoeditError, match="preserve_general must be a finite number >= 0"):
        small(suite_file, preserve_general=(-1.0,))
    no_split = tmp_path / "no-split.json"
    no_split.write_text(json.dumps({k: v for k, v in SUITE.items() if k != "validation"}))
    with pytest.raises(LocoeditError, match="has no validation split, so settings cannot be chosen apart"):
        tune(small(suite_file, suite=str(no_split)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
