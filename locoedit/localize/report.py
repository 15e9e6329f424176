"""The HTML section and page of a LocoGen run: per-window effect plot, image grid, layer table."""

from __future__ import annotations

from html import escape

from locoedit.localize.result import LocalizationResult
from locoedit.report.html import effect_plot_svg, image_grid_html, number, page


def _window_label(layers) -> str:
    return f"layers {layers[0]}-{layers[-1]}"


def screening_section(result: LocalizationResult) -> str:
    """The cheap stage of a screened run: every window's effect at the screening budget, and which went on."""
    screening = result.sweeps[-1].screening
    if screening is None:
        return ""
    confirmed = {tuple(w.layers): w for w in result.windows}
    rows = "".join(
        f"<tr><td>{_window_label(w.layers)}</td><td>{number(w.effect)} &plusmn; {number(w.effect_std, 2)}</td>"
        f"<td>{number(confirmed[tuple(w.layers)].effect) if tuple(w.layers) in confirmed else 'not confirmed'}</td></tr>"
        for w in screening.windows
    )
    return (
        f"<h3>Screening</h3><p>Every window ranked on {screening.steps} steps and seeds {screening.seeds} (routing "
        f"every layer: {number(screening.full_swap_effect)}); the top {screening.top_k} got the full budget "
        f"({result.settings.num_inference_steps} steps, seeds {list(result.seeds)}).</p>"
        f"<table><tr><th>window</th><th>effect, screening</th><th>effect, full budget</th></tr>{rows}</table>"
    )


def localization_section(result: LocalizationResult, image_root: str = "") -> str:
    """``image_root`` is prepended to image paths, for a page that lives outside the run folder."""
    request, chosen = result.request, result.chosen

    def images(paths):
        return [image_root + p for p in paths]

    columns = [f"p{p} s{s}" for p in range(len(request.prompts)) for s in request.seeds]
    rows = [("original", images(result.images.original))]
    if result.images.target:
        rows.append(("target (all layers)", images(result.images.target)))
    rows += [(_window_label(w.layers), images(w.images)) for w in result.windows]
    layer_rows = "".join(
        f"<tr><td>{layer.index}</td><td><code>{escape(layer.name)}</code></td><td>{layer.block}</td>"
        f"<td>{layer.resolution}</td><td>{', '.join(layer.edit_projections)}</td></tr>"
        for layer in result.layers
    )
    prompts = "".join(f"<li>{escape(p)} &rarr; {escape(t)}</li>" for p, t in zip(request.prompts, request.targets))
    return (
        f"<h2>LocoGen: where is “{escape(result.concept)}”?</h2>"
        f"<p>Model <code>{escape(result.model)}</code>, scorer <code>{escape(str(request.scorer))}</code>, "
        f"window size {result.window_size}, seeds {list(result.seeds)}, mode {request.mode}.</p>"
        f"<ul>{prompts}</ul>"
        f"<p><b>Chosen layers {list(chosen.layers)}</b> ({', '.join(f'<code>{escape(n)}</code>' for n in chosen.names)}): "
        f"effect {chosen.effect:.4g} &plusmn; {chosen.effect_std:.2g}; routing every layer: "
        f"{result.full_swap_effect:.4g}{' (screening budget)' if result.sweeps[-1].screening else ''}.</p>"
        f"<h3>Effect per window</h3>{effect_plot_svg(result.windows, len(result.layers), chosen.layers)}"
        f"{screening_section(result)}"
        f"<h3>Images</h3>{image_grid_html(rows, columns, highlight=_window_label(chosen.layers))}"
        f"<h3>Cross-attention layers</h3><table class='layers'><tr><th>index</th><th>module</th><th>block</th>"
        f"<th>resolution</th><th>edited projections</th></tr>{layer_rows}</table>"
    )


def localization_report_html(result: LocalizationResult) -> str:
    return page(f"LocoGen: {result.concept}", localization_section(result))
