"""locoedit compare: a LocoGen run and a tracing run of one model on one page, layer by layer."""

import json
import re

import pytest

from locoedit.core.errors import LocoeditError
from locoedit.localize import LocalizationRequest, localize
from locoedit.scoring import PixelScorer
from locoedit.trace import TraceRequest, trace
from locoedit.workflows.compare import compare

PROMPT = "a house in the style of van gogh"


@pytest.fixture(scope="module")
def runs(tiny_adapters, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    adapter = tiny_adapters["sd"]
    localize(
        LocalizationRequest(
            model="tiny", prompts=(PROMPT,), targets=("a house",), window=2, seeds=(0,), steps=2, height=16, width=16
        ),
        folder / "locogen",
        adapter,
        PixelScorer(),
    )
    trace(
        TraceRequest(
            model="tiny",
            prompts=(PROMPT,),
            concept="van gogh",
            seeds=(0,),
            steps=2,
            height=16,
            width=16,
            parts=("denoiser",),
        ),
        folder / "trace",
        adapter,
        PixelScorer(),
    )
    return folder


def test_curves_on_the_cross_attention_layers(tiny_adapters, runs, tmp_path):
    comparison = compare([runs / "locogen", runs / "trace"], tmp_path / "cmp")
    layers = tiny_adapters["sd"].layers
    assert comparison.layers == [layer.name for layer in layers]
    locogen, traced = comparison.curves
    assert locogen.method == "locogen" and traced.method == "causal tracing"
    assert len(locogen.values) == len(traced.values) == len(layers)
    site_effects = {s["name"]: s["effect"] for s in json.loads((runs / "trace" / "trace.json").read_text())["sites"]}
    assert traced.values == [site_effects[f"unet.{layer.name}"] for layer in layers]
    best = max(range(len(layers)), key=lambda i: traced.values[i])
    assert traced.chosen == [best]
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["format"] == "locoedit.comparison/1" and len(data["curves"]) == 2
    html = (tmp_path / "cmp" / "compare.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert sources and all((tmp_path / "cmp" / s).resolve().is_file() for s in sources)


def test_refusals(runs, tmp_path, tiny_adapters):
    with pytest.raises(LocoeditError, match="holds neither localization.json nor trace.json"):
        compare([tmp_path], tmp_path / "cmp")
    other = tmp_path / "other"
    trace(
        TraceRequest(
            model="tiny",
            prompts=("a red circle",),
            concept="red",
            seeds=(0,),
            steps=2,
            height=16,
            width=16,
            parts=("denoiser",),
        ),
        other,
        tiny_adapters["pixart"],
        PixelScorer(),
    )
    with pytest.raises(LocoeditError, match="other cross-attention layers"):
        compare([runs / "locogen", other], tmp_path / "cmp2")
