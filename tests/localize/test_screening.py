"""Screening (--screen STEPS:SEEDS:TOPK): every window ranked on a small budget, the top k confirmed on the full one."""

import json

import pytest

from locoedit.core.errors import LocoeditError
from locoedit.localize import LocalizationRequest, LocalizationResult, Screen, localize
from locoedit.scoring import PixelScorer

PROMPTS = ("a house in the style of van gogh", "a dog in the style of van gogh")
TARGETS = ("a house", "a dog")


def request(**changes):
    fields = dict(model="tiny", prompts=PROMPTS, targets=TARGETS, window=2, seeds=(0, 1, 2), steps=4, chunk=3)
    return LocalizationRequest(**{**fields, **changes})


@pytest.fixture(scope="module")
def full(tiny_adapters):
    return localize(request(), None, tiny_adapters["sd"], PixelScorer())


def test_screening_ranks_every_window_cheaply_and_confirms_the_top_k(tiny_adapters, full, tmp_path):
    screened = localize(request(screen=Screen(2, 1, 2)), tmp_path, tiny_adapters["sd"], PixelScorer())
    screening = screened.sweeps[-1].screening
    assert [w.layers for w in screening.windows] == [w.layers for w in full.windows]  # all 6 windows
    assert all(len(w.effects) == 2 and not w.images for w in screening.windows)  # 2 prompts x 1 seed, no images
    ranked = sorted(screening.windows, key=lambda w: -w.effect)
    assert sorted(w.layers for w in screened.windows) == sorted(w.layers for w in ranked[:2])
    by_layers = {tuple(w.layers): w for w in full.windows}
    for window in screened.windows:  # confirmed on the full budget: the full sweep's numbers
        assert window.effects == pytest.approx(by_layers[tuple(window.layers)].effects, abs=1e-5)
        assert len(window.images) == 6 and all((tmp_path / path).is_file() for path in window.images)
    assert screened.chosen.layers == max(screened.windows, key=lambda w: w.effect).layers
    # Denoiser calls: (6 windows + 2 references) x 2 rows x 2 steps, then (2 windows + originals) x 6 rows x 4 steps.
    assert screened.timings["denoiser_calls"] == 8 * 2 * 2 + 3 * 6 * 4
    assert full.timings["denoiser_calls"] == 8 * 6 * 4
    assert screened.images.target == [] and not (tmp_path / "images" / "target").exists()
    html = (tmp_path / "report.html").read_text()
    assert "<h3>Screening</h3>" in html and html.count("not confirmed") == 4


def test_a_screened_run_resumes_without_generating_again(tiny_adapters, tmp_path):
    req = request(screen=Screen(2, 1, 2))
    first = localize(req, tmp_path, tiny_adapters["sd"], PixelScorer())
    again = localize(req, tmp_path, tiny_adapters["sd"], PixelScorer())
    assert again.timings["denoiser_calls"] == 0
    assert again.sweeps[-1].screening == first.sweeps[-1].screening and again.windows == first.windows


def test_screening_with_auto_windows_confirms_only_the_last_size(tiny_adapters):
    result = localize(
        request(window="auto", auto_threshold=1.0, screen=Screen(2, 1, 1)), None, tiny_adapters["sd"], PixelScorer()
    )
    assert len(result.sweeps) > 1
    assert all(s.windows == [] and s.screening is not None for s in result.sweeps[:-1])
    assert len(result.windows) == 1 and result.chosen.layers == result.windows[0].layers


def test_a_version_1_result_still_loads(tiny_adapters, tmp_path):
    localize(request(), tmp_path, tiny_adapters["sd"], PixelScorer())
    data = json.loads((tmp_path / "localization.json").read_text())
    data["format"] = "locoedit.localization/1"
    data["request"].pop("screen")
    for sweep in data["sweeps"]:
        sweep.pop("screening")
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = LocalizationResult.load(tmp_path / "old.json")
    assert old.request.screen is None and old.sweeps[-1].screening is None
    assert old.windows == LocalizationResult.load(tmp_path).windows


@pytest.mark.parametrize(
    "text, message",
    [
        ("2:1", "is not STEPS:SEEDS:TOPK"),
        ("a:1:1", "is not STEPS:SEEDS:TOPK"),
        ("0:1:1", "screen steps must be"),
        ("2:0:1", "screen seeds must be"),
        ("2:1:0", "screen top_k must be"),
    ],
)
def test_bad_screens_name_the_problem(text, message):
    with pytest.raises(LocoeditError, match=message):
        Screen.parse(text)


def test_a_screen_must_be_cheaper_than_the_sweep(tiny_adapters):
    with pytest.raises(LocoeditError, match="ranks windows on 4 seeds but the request has only 3"):
        request(screen=Screen(2, 4, 1))
    with pytest.raises(LocoeditError, match="screen steps 4 are not fewer than the full 4 steps"):
        request(screen=Screen(4, 1, 1))
    with pytest.raises(LocoeditError, match="not fewer than the sweep's 20"):  # the toy world's default steps
        from locoedit.models import load_adapter

        localize(
            LocalizationRequest(
                model="toyworld",
                prompts=("a red circle on black",),
                targets=("a red shape on black",),
                screen=Screen(20, 1, 1),
            ),
            None,
            load_adapter("toyworld", device="cpu"),
        )
