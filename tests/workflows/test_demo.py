"""The demo end to end on the shipped toy world, with one seed per prompt (a smoke run; the README's figures use
the plan's seeds)."""

import json

import pytest

from locoedit.core.errors import LocoeditError
from locoedit.delta.file import EditDelta
from locoedit.workflows.demo import run_demo, summary_lines


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from locoedit.models import load_adapter

    out = tmp_path_factory.mktemp("demo")
    adapter = load_adapter("toyworld", device="cpu")
    before = {name: p.detach().clone() for name, p in adapter.denoiser.named_parameters()}
    rows = run_demo(out, adapter=adapter, seeds=1)
    return out, rows, adapter, before


CASES = {"style": "style", "object": "object", "fact": "fact", "three styles": "three-styles"}  # case -> folder


def test_demo_localizes_edits_and_evaluates_each_case(demo_run):
    out, rows, adapter, _ = demo_run
    assert [(r.kind, r.variant, r.suite) for r in rows] == [
        ("style", "localized", "toyworld-style-kandinsky"),
        ("style", "all layers", "toyworld-style-kandinsky"),
        ("style", "random window", "toyworld-style-kandinsky"),
        ("style", "neurons", "toyworld-style-kandinsky"),
        ("object", "localized", "toyworld-object-circle"),
        ("object", "all layers", "toyworld-object-circle"),
        ("object", "random window", "toyworld-object-circle"),
        ("fact", "localized", "toyworld-fact-sun"),
        ("fact", "all layers", "toyworld-fact-sun"),
        ("fact", "random window", "toyworld-fact-sun"),
        ("three styles", "localized", "toyworld-style-all"),
    ]
    for row in rows:
        assert all(0 <= getattr(row.headline, k) <= 1 for k in ("efficacy", "generalization", "identity"))
        assert (out / row.report).is_file()
    for case, folder in CASES.items():
        runs = [json.loads(f.read_text()) for f in sorted((out / folder).glob("localize*/localization.json"))]
        localized = next(r for r in rows if r.kind == case and r.variant == "localized")
        # The union of the case's LocoGen windows (the fact's own, and for a fact each attribute its target changes),
        # then widened while the edit falls short of the routing.
        tries = EditDelta.load(out / folder / "localized.safetensors").settings["auto_layers"]
        assert tries[0]["layers"] == sorted({layer for run in runs for layer in run["chosen"]["layers"]})
        assert localized.layers == tries[-1]["layers"]
        adopted = [(run["request"]["concept"], run["request"]["adopt"]) for run in runs if run["request"]["adopt"]]
        assert adopted == ([("yellow", "red")] if case == "fact" else []), case  # the sun, yellow, -> "a red circle"
        assert (out / folder / "localized.safetensors").is_file()
    for case in ("style", "object", "fact"):
        localized = next(r for r in rows if r.kind == case and r.variant == "localized")
        random_window = next(r for r in rows if r.kind == case and r.variant == "random window")
        assert random_window.layers != localized.layers and len(random_window.layers) == len(localized.layers)
    summary = json.loads((out / "demo.json").read_text())
    assert len(summary["rows"]) == len(rows) and summary["seeds"] == {"localize": 1, "evaluation": 1}
    assert summary_lines(rows)[0].split()[:4] == ["case", "edit", "suite", "layers"]


def test_demo_localizes_each_edit_on_its_own_prompt_pairs(demo_run):
    """LocoGen runs on the edit's pairs (the concept prompt -> the same prompt with the target), so the window found
    is the one that controls what the edit changes; the edit of every layer removes the concept in every case."""
    out, rows, _, _ = demo_run
    for case, folder in CASES.items():
        localization = json.loads((out / folder / "localize" / "localization.json").read_text())
        delta = EditDelta.load(out / folder / "localized.safetensors")
        own = len(delta.settings["prompt_pairs"]) - delta.settings["contrast_pairs"]  # the look-alikes' come last
        pairs = [pair for pair in delta.settings["prompt_pairs"][:own] if pair[1]]
        assert [list(p) for p in zip(localization["request"]["prompts"], localization["request"]["targets"])] == pairs
        effects = [window["effect"] for window in localization["windows"]]
        assert localization["chosen"]["effect"] == max(effects) > 0, case
    for row in rows:
        if row.variant == "all layers":
            assert row.layers == list(range(11)) and row.headline.efficacy == 1.0, row.kind


def test_demo_report_links_resolve(demo_run):
    import re

    out = demo_run[0]
    html = (out / "report.html").read_text()
    targets = re.findall(r'(?:src|href)="([^"#]+)"', html) + re.findall(r"(?:src|href)='([^'#]+)'", html)
    assert len(targets) > 50
    missing = [t for t in targets if not (out / t).is_file()]
    assert not missing


def test_demo_leaves_the_model_as_it_found_it(demo_run):
    import torch

    _, _, adapter, before = demo_run
    for name, parameter in adapter.denoiser.named_parameters():
        assert torch.equal(parameter, before[name]), name


def test_demo_refuses_a_folder_holding_something_else(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(LocoeditError, match="is not empty and holds no locoedit run"):
        run_demo(tmp_path, seeds=1)


def test_demo_rerun_resumes_without_generating_again(demo_run, monkeypatch):
    out, rows, adapter, _ = demo_run

    def no_generation(*args, **kwargs):
        raise AssertionError("a finished demo should be read back, not generated again")

    monkeypatch.setattr(adapter, "generate", no_generation)
    again = run_demo(out, adapter=adapter, seeds=1)
    assert [(r.kind, r.variant, r.suite, r.layers) for r in again] == [
        (r.kind, r.variant, r.suite, r.layers) for r in rows
    ]
    with pytest.raises(LocoeditError, match="holds a different run"):
        run_demo(out, adapter=adapter, seeds=2)


def test_demo_refuses_a_model_that_is_no_shipped_toy_and_writes_nothing(tmp_path):
    out = tmp_path / "demo"
    with pytest.raises(
        LocoeditError, match="--model 'sd' is not a shipped toy model; use one of toyworld, toyworld-mmdit"
    ):
        run_demo(out, seeds=1, model="sd")
    assert not out.exists()


@pytest.mark.parametrize("model", ["toyworld", "toyworld-mmdit"])
def test_on_the_toy_mmdit_each_controlled_case_also_runs_the_context_embedder_baseline(model, monkeypatch, tmp_path):
    """The toy MMDiT's cases with controls get a fourth variant, the context_embedder edit of the same concepts,
    prompts and rows (no layers); the UNet toy world's do not (it has no context_embedder)."""
    from locoedit.edit import ContextEmbedderRequest, EditRequest
    from locoedit.edit.common import with_model_defaults
    from locoedit.models import load_adapter
    from locoedit.workflows import demo

    adapter = load_adapter(model, device="cpu")
    monkeypatch.setattr(demo, "compute_edit", lambda adapter, request: request)  # the requests, not the edits
    request = with_model_defaults(
        EditRequest(model=model, concepts=("circle",), targets=("square",), layers=(0, 1)), adapter
    )
    case = {"controls": True, "neurons": False}
    variants = demo._variants(adapter, request, [0, 1], case, request, seed=0, case_dir=tmp_path)
    if model == "toyworld":
        assert list(variants) == ["localized", "all layers", "random window"]
        return
    assert list(variants) == ["localized", "all layers", "random window", demo.CONTEXT_BASELINE]
    layers, baseline = variants[demo.CONTEXT_BASELINE]
    assert layers == [] and isinstance(baseline, ContextEmbedderRequest)
    assert (baseline.concepts, baseline.prompts, baseline.token) == (request.concepts, request.prompts, request.token)
    assert demo._layers(layers) == "-"
