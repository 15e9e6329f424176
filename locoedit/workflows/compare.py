"""``locoedit compare``: LocoGen and causal-tracing runs of one model on one page, on the axis of its cross-attention
layers (LocoGen's numbering, execution order)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord
from locoedit.core.io import write_text
from locoedit.localize import LocalizationResult
from locoedit.localize.result import RESULT_FILE as LOCALIZATION_FILE
from locoedit.report.html import image_grid_html, number, page
from locoedit.trace import TraceResult
from locoedit.trace.result import RESULT_FILE as TRACE_FILE


@dataclass(frozen=True)
class LayerCurve:
    run: str  # the run folder
    method: str  # "locogen" or "causal tracing"
    label: str  # what each value is
    concept: str
    values: list[float | None]  # per cross-attention layer
    chosen: list[int]  # the layers the run picks out


@dataclass(frozen=True)
class Comparison(JsonRecord):
    FORMAT = "locoedit.comparison/1"

    layers: list[str]  # cross-attention layer module paths, in execution order
    curves: list[LayerCurve]


def _locogen_curve(run: str, result: LocalizationResult) -> LayerCurve:
    values = [
        max((w.effect for w in result.windows if index in w.layers), default=None)
        for index in range(len(result.layers))
    ]
    return LayerCurve(
        run,
        "locogen",
        f"best effect of a window of {result.window_size} holding the layer",
        result.concept,
        values,
        list(result.chosen.layers),
    )


def _trace_curve(run: str, result: TraceResult) -> LayerCurve:
    by_name = {site.name: site.effect for site in result.sites}
    prefix = result.sites[0].name.split(".")[0] if result.sites else "unet"
    values = [by_name.get(f"{prefix}.{layer.name}") for layer in result.layers]
    measured = [(v, i) for i, v in enumerate(values) if v is not None]
    return LayerCurve(
        run,
        "causal tracing",
        "effect of restoring the layer's cross-attention output",
        result.concept,
        values,
        [max(measured)[1]] if measured else [],
    )


def compare(runs: Sequence[str | Path], out: str | Path) -> Comparison:
    """Read each run folder (``locoedit localize`` or ``locoedit trace``), check they are of one model's layers, and
    write ``compare.json`` and ``compare.html`` into ``out``."""
    if not runs:
        raise LocoeditError("give at least one run folder of `locoedit localize` or `locoedit trace`")
    curves, layer_names, images = [], None, []
    for run in map(Path, runs):
        if (run / LOCALIZATION_FILE).is_file():
            result = LocalizationResult.load(run)
            curve, names = _locogen_curve(str(run), result), [layer.name for layer in result.layers]
            images += [
                (f"{run.name}: original", [f"{run}/{p}" for p in result.images.original]),
                (f"{run.name}: target", [f"{run}/{p}" for p in result.images.target]),
            ]
        elif (run / TRACE_FILE).is_file():
            traced = TraceResult.load(run)
            curve, names = _trace_curve(str(run), traced), [layer.name for layer in traced.layers]
            images += [
                (f"{run.name}: clean", [f"{run}/{p}" for p in traced.images.clean]),
                (f"{run.name}: corrupted", [f"{run}/{p}" for p in traced.images.corrupted]),
            ]
        else:
            raise LocoeditError(
                f"{run} holds neither {LOCALIZATION_FILE} nor {TRACE_FILE}; give run folders of "
                "`locoedit localize` or `locoedit trace`"
            )
        if layer_names is not None and names != layer_names:
            raise LocoeditError(
                f"{run} was run on a model with other cross-attention layers than {runs[0]}; compare runs of one model"
            )
        layer_names = names
        curves.append(curve)
    assert layer_names is not None  # runs is not empty
    comparison = Comparison(layer_names, curves)
    out = Path(out)
    comparison.write(out / "compare.json")
    write_text(out / "compare.html", page("locoedit compare", _section(comparison, images, out)))
    return comparison


_COLOURS = ("#c0392b", "#2980b9", "#27ae60", "#8e44ad", "#d35400", "#16a085")


def _curves_svg(comparison: Comparison, width: int = 720, height: int = 260) -> str:
    left, right, top, bottom = 50, 10, 20, 40
    count = len(comparison.layers)
    values = [v for c in comparison.curves for v in c.values if v is not None]
    low, high = min(values + [0.0]), max(values + [1.0])
    x = lambda i: left + (width - left - right) * (i + 0.5) / count
    y = lambda v: top + (height - top - bottom) * (high - v) / (high - low)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<line x1="{left}" y1="{y(0):.1f}" x2="{width - right}" y2="{y(0):.1f}" stroke="#888"/>',
    ]
    for n, curve in enumerate(comparison.curves):
        colour = _COLOURS[n % len(_COLOURS)]
        points = [(x(i), y(v)) for i, v in enumerate(curve.values) if v is not None]
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
            + " ".join(f"{a:.1f},{b:.1f}" for a, b in points)
            + '"/>'
        )
        for i in curve.chosen:
            if curve.values[i] is not None:
                parts.append(
                    f'<circle cx="{x(i):.1f}" cy="{y(curve.values[i]):.1f}" r="5" fill="{colour}">'
                    f"<title>{escape(curve.method)}: chosen layer {i}</title></circle>"
                )
    for i in range(count):
        parts.append(f'<text x="{x(i):.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle">{i}</text>')
    parts.append(
        f'<text x="{left + (width - left) / 2}" y="{height - 8}" font-size="11" text-anchor="middle">'
        "cross-attention layer (execution order)</text>"
    )
    for value in (low, high):
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" font-size="10" text-anchor="end">{value:.3g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _section(comparison: Comparison, images, out: Path) -> str:
    legend = "".join(
        f"<li><span style='color:{_COLOURS[n % len(_COLOURS)]}'>&#9632;</span> {escape(c.method)} "
        f"({escape(c.run)}), “{escape(c.concept)}”: {escape(c.label)}; chosen layers {c.chosen}</li>"
        for n, c in enumerate(comparison.curves)
    )
    rows = "".join(
        f"<tr><td>{i}</td><td><code>{escape(name)}</code></td>"
        + "".join(f"<td>{number(c.values[i])}</td>" for c in comparison.curves)
        + "</tr>"
        for i, name in enumerate(comparison.layers)
    )
    relative = [(label, [os.path.relpath(Path(p).resolve(), out.resolve()) for p in paths]) for label, paths in images]
    return (
        f"<h1>LocoGen and causal tracing, layer by layer</h1><ul>{legend}</ul>{_curves_svg(comparison)}"
        f"<table class='layers'><tr><th>layer</th><th>module</th>"
        + "".join(f"<th>{escape(c.method)}</th>" for c in comparison.curves)
        + f"</tr>{rows}</table>"
        f"<h2>Images</h2>{image_grid_html(relative, [f'image {i}' for i in range(max(len(p) for _, p in images))])}"
    )
