"""The demo end to end on the shipped toy world, with one seed per prompt (a smoke run; the README's figures use
the plan's seeds)."""

import json

import pytest

from locoedit.workflows.demo import run_demo, summary_lines
from locoedit.core.errors import LocoeditError


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from locoedit.models import load_adapter

    out = tmp_path_factory.mktemp("demo")
    adapter = load_adapter("toyworld", device="cpu")
    before = {name: p.detach().clone() for name, p in adapter.denoiser.named_parameters()}
    rows = run_demo(out, adapter=adapter, seeds=1)
    return out, rows, adapter, before


def test_demo_localizes_edits_and_evaluates_each_kind(demo_run):
    out, rows, adapter, _ = demo_run
    assert [(r.kind, r.variant) for r in rows] == [
        ("style", "localized"), ("style", "all layers"), ("style", "random window"), ("style", "neurons"),
        ("object", "localized"), ("object", "all layers"), ("object", "random window"),
        ("fact", "localized"), ("fact", "all layers"), ("fact", "random window"),
    ]
    for row in rows:
        assert all(0 <= getattr(row.headline, k) <= 1 for k in ("efficacy", "generalization", "specificity"))
        assert (out / row.report).is_file()
    for kind in ("style", "object", "fact"):
        localization = json.loads((out / kind / "localize" / "localization.json").read_text())
        localized = next(r for r in rows if r.kind == kind and r.variant == "localized")
        assert localized.layers == localization["chosen"]["layers"]
        random_window = next(r for r in rows if r.kind == kind and r.variant == "random window")
        assert random_window.layers != localized.layers and len(random_window.layers) == len(localized.layers)
        assert (out / kind / "localized.safetensors").is_file()
    summary = json.loads((out / "demo.json").read_text())
    assert len(summary["rows"]) == len(rows) and summary["seeds"] == {"localize": 1, "evaluation": 1}
    assert summary_lines(rows)[0].split()[:3] == ["kind", "edit", "layers"]


def test_demo_chooses_the_readme_windows_by_the_largest_positive_effect(demo_run):
    """The README's table (plan seeds) chooses layers 2-4 for all three cases; at the test's one seed per prompt
    LocoGen chooses them too (measured effects 0.75, 0.26, 0.49; every window starting after layer 2 under 0.01)."""
    out, rows, _, _ = demo_run
    for kind in ("style", "object", "fact"):
        localization = json.loads((out / kind / "localize" / "localization.json").read_text())
        effects = {window["layers"][0]: window["effect"] for window in localization["windows"]}
        assert localization["chosen"]["layers"] == [2, 3, 4], kind
        assert localization["chosen"]["effect"] == max(effects.values()) > 0.2, kind  # positive: the concept is gone
        assert all(abs(effect) < 0.01 for start, effect in effects.items() if start > 2), kind
        assert localization["full_swap_effect"] > 0.5, kind
    # Figures of the README's table that hold at one seed too: the edit of every layer removes each concept, and
    # the random windows are the ones drawn there.
    for row in rows:
        if row.variant == "all layers":
            assert row.layers == list(range(11)) and row.headline.efficacy == 1.0, row.kind
    random_windows = {r.kind: r.layers for r in rows if r.variant == "random window"}
    assert random_windows == {"style": [7, 8, 9], "object": [4, 5, 6], "fact": [6, 7, 8]}


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
    with pytest.raises(LocoeditError, match="holds no demo"):
        run_demo(tmp_path, seeds=1)
