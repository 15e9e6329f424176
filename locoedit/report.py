"""HTML reports: image grids and per-layer effect plots (inline SVG), from the JSON a run writes."""

from __future__ import annotations

from html import escape

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table.grid td, table.grid th { padding: 2px 6px; text-align: center; font-size: 12px; }
table.grid img { width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid #ccc; }
tr.chosen th { color: #b00; }
table.layers td, table.layers th { padding: 2px 8px; font-size: 12px; border-bottom: 1px solid #eee; }
code { background: #f4f4f4; padding: 1px 4px; }
"""

MAX_COLUMNS = 8


def effect_plot_svg(windows: list[dict], num_layers: int, chosen: list[int], width: int = 640, height: int = 240) -> str:
    """Bar per window at its first layer, with +- one standard deviation; the chosen window in red."""
    left, bottom, top, right = 50, 40, 20, 10
    values = [w["effect"] for w in windows]
    spreads = [w["effect_std"] for w in windows]
    high = max([v + s for v, s in zip(values, spreads)] + [1e-9])
    low = min([v - s for v, s in zip(values, spreads)] + [0.0])
    plot_w, plot_h = width - left - right, height - top - bottom
    y = lambda v: top + plot_h * (high - v) / (high - low)  # noqa: E731
    slot = plot_w / max(num_layers, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    parts.append(f'<line x1="{left}" y1="{y(0):.1f}" x2="{width - right}" y2="{y(0):.1f}" stroke="#888"/>')
    for window, value, spread in zip(windows, values, spreads):
        start = window["layers"][0]
        x = left + slot * start + slot * 0.15
        colour = "#c0392b" if window["layers"] == chosen else "#2980b9"
        top_y, base_y = sorted((y(value), y(0)))
        label = f"layers {window['layers']}: effect {value:.4g} +- {spread:.2g}"
        parts.append(
            f'<rect x="{x:.1f}" y="{top_y:.1f}" width="{slot * 0.7:.1f}" height="{max(base_y - top_y, 0.5):.1f}" '
            f'fill="{colour}"><title>{escape(label)}</title></rect>'
        )
        centre = x + slot * 0.35
        parts.append(
            f'<line x1="{centre:.1f}" y1="{y(value + spread):.1f}" x2="{centre:.1f}" y2="{y(value - spread):.1f}" '
            'stroke="#333"/>'
        )
    for layer in range(num_layers):
        parts.append(
            f'<text x="{left + slot * (layer + 0.5):.1f}" y="{height - bottom + 14}" font-size="10" '
            f'text-anchor="middle">{layer}</text>'
        )
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" font-size="11" text-anchor="middle">'
                 "first layer of the window</text>")
    for value in (low, (low + high) / 2, high):
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" font-size="10" text-anchor="end">{value:.3g}</text>')
    parts.append(f'<text x="12" y="{top + plot_h / 2}" font-size="11" transform="rotate(-90 12 {top + plot_h / 2})" '
                 'text-anchor="middle">effect</text>')
    parts.append("</svg>")
    return "".join(parts)


def image_grid_html(rows: list[tuple[str, list[str]]], columns: list[str], highlight: str | None = None) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns[:MAX_COLUMNS])
    body = []
    for label, paths in rows:
        cls = ' class="chosen"' if label == highlight else ""
        cells = "".join(f'<td><img src="{escape(p)}" alt="{escape(label)} {i}"></td>'
                        for i, p in enumerate(paths[:MAX_COLUMNS]))
        body.append(f"<tr{cls}><th>{escape(label)}</th>{cells}</tr>")
    return f'<table class="grid"><tr><th></th>{head}</tr>{"".join(body)}</table>'


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>\n")


def localization_section(result: dict) -> str:
    request = result["request"]
    chosen = result["chosen"]
    columns = [f"p{p} s{s}" for p in range(len(request["prompts"])) for s in request["seeds"]]
    def label(w):
        return f"layers {w['layers'][0]}-{w['layers'][-1]}"
    rows = [("original", result["images"]["original"]), ("target (all layers)", result["images"]["target"])]
    rows += [(label(w), w["images"]) for w in result["windows"]]
    layer_rows = "".join(
        f"<tr><td>{layer['index']}</td><td><code>{escape(layer['name'])}</code></td><td>{layer['block']}</td>"
        f"<td>{layer['resolution']}</td><td>{', '.join(layer['edit_projections'])}</td></tr>"
        for layer in result["layers"]
    )
    prompts = "".join(f"<li>{escape(p)} &rarr; {escape(t)}</li>" for p, t in zip(request["prompts"], request["targets"]))
    return (
        f"<h2>LocoGen: where is “{escape(result['concept'])}”?</h2>"
        f"<p>Model <code>{escape(result['model'])}</code>, scorer <code>{escape(request['scorer'])}</code>, "
        f"window size {result['window_size']}, seeds {result['seeds']}, mode {request['mode']}.</p>"
        f"<ul>{prompts}</ul>"
        f"<p><b>Chosen layers {chosen['layers']}</b> ({', '.join(f'<code>{escape(n)}</code>' for n in chosen['names'])}): "
        f"effect {chosen['effect']:.4g} &plusmn; {chosen['effect_std']:.2g}; routing every layer: "
        f"{result['full_swap_effect']:.4g}.</p>"
        f"<h3>Effect per window</h3>{effect_plot_svg(result['windows'], len(result['layers']), chosen['layers'])}"
        f"<h3>Images</h3>{image_grid_html(rows, columns, highlight=label({'layers': chosen['layers']}))}"
        f"<h3>Cross-attention layers</h3><table class='layers'><tr><th>index</th><th>module</th><th>block</th>"
        f"<th>resolution</th><th>edited projections</th></tr>{layer_rows}</table>"
    )


def localization_report_html(result: dict) -> str:
    return page(f"LocoGen: {result['concept']}", localization_section(result))


# ---------------------------------------------------------------------------------------------------- evaluation

_GROUP_TITLES = {
    "concept": "Concept prompts (efficacy)",
    "paraphrases": "Paraphrases (generalization)",
    "neighbours": "Neighbouring concepts (specificity)",
    "unrelated": "Unrelated prompts (specificity)",
}


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def _percent(value) -> str:
    return "&ndash;" if value is None else f"{100 * value:.1f}%"


def _metric_rows(result: dict) -> list[tuple[str, str, str, str, str]]:
    """(metric, before, after, change, target) rows of the evaluation's table."""
    metrics, targets, meets = result["metrics"], result["targets"], result["meets_targets"]

    def target(name):
        if name not in targets or meets.get(name) is None:
            return ""
        return f"&ge; {_percent(targets[name])} {'&#10003;' if meets[name] else '&#10007; missed'}"

    rows = []
    for name, label in (("efficacy", "concept prompts"), ("generalization", "paraphrases")):
        entry = metrics[name]
        if entry is None:
            rows.append((f"{name} ({label})", "not measured (no prompts)", "", "", ""))
            continue
        score = entry["score"]
        rows.append((f"{name}: mean concept score ({label})", _number(score["before"]), _number(score["after"]),
                     _number(score["change"]), ""))
        if "rate" in entry:
            rows.append((f"{name}: concept absent ({label})", _percent(entry["absent_before"]),
                         _percent(entry["absent_after"]), "", target(name)))
    specificity = metrics["specificity"]
    for group in ("neighbours", "unrelated"):
        entry = specificity[group]
        if entry is None:
            continue
        score = entry["score"]
        rows.append((f"specificity: own-concept score ({group})", _number(score["before"]), _number(score["after"]),
                     _number(score["change"]), ""))
        if "attributes_unchanged" in entry:
            rows.append((f"specificity: attributes unchanged ({group})", "", _percent(entry["attributes_unchanged"]), "", ""))
        rows.append((f"specificity: SSIM / PSNR to unedited ({group})", "", f"{_number(entry['ssim'])} / "
                     f"{_number(entry['psnr'])} dB", "", ""))
    if specificity["rate"] is not None:
        rows.append(("specificity: neighbour and unrelated images unchanged", "", _percent(specificity["rate"]), "",
                     target("specificity")))
    other = specificity.get("other_attributes")
    if other is not None:
        ignored = ", ".join(other["ignored"]) or "none"
        rows.append((f"specificity: other attributes unchanged on concept prompts (ignoring {ignored})", "",
                     _percent(other["rate"]), "", target("other_attributes")))
    quality = metrics["quality"]
    if quality.get("frechet_distance") is not None:
        rows.append((f"quality: Frechet distance before vs after ({quality['features']})", "",
                     _number(quality["frechet_distance"]), "", ""))
    return rows


def evaluation_section(result: dict, localization: dict | None = None, data_link: str = "evaluation.json") -> str:
    """Metric table, the effect curve of the localization (if known), and before/after grids per prompt group.

    Image paths are used as the result gives them; ``data_link`` is where the link to the result's JSON points (set
    both when embedding the section in a page that lives in another folder).
    """
    suite, delta = result["suite"], result["delta"]
    localization = localization or result.get("localization")
    table = "".join(
        f"<tr><td>{escape(name)}</td><td>{before}</td><td>{after}</td><td>{change}</td><td>{target}</td></tr>"
        for name, before, after, change, target in _metric_rows(result)
    )
    layers = ", ".join(f"{layer['index']} (<code>{escape(layer['name'])}</code>)" for layer in delta["layers"])
    edited = delta["settings"].get("concepts")
    targets = delta["settings"].get("targets")
    what = ""
    if edited and targets:
        shown = [f"“{escape(t)}”" if t.strip() else "(removed)" for t in targets]
        what = f"“{escape(', '.join(edited))}” &rarr; {', '.join(shown)}"
    parts = [
        f"<h2>Evaluation: {escape(suite['name'])}</h2>",
        f"<p>{escape(suite.get('description') or '')}</p>",
        f"<p>Edit {what} by <code>{escape(delta['method'])}</code> on layers {layers}; base model "
        f"<code>{escape(delta['base_model'])}</code>. Scored concept “{escape(suite['concept'])}” with "
        f"<code>{escape(result['scorer'])}</code>; seeds {suite['seeds']}; {result['settings']['num_inference_steps']} "
        f"steps, guidance {result['settings']['guidance_scale']}. Before and after use the same seeds.</p>",
        f"<p>Data: <a href='{escape(data_link)}'>evaluation.json</a></p>",
        "<h3>Metrics</h3><table class='layers metrics'><tr><th>metric</th><th>before edit</th><th>after edit</th>"
        f"<th>change</th><th>target</th></tr>{table}</table>",
        f"<p><small>{escape(result['metrics']['quality']['inception_fid_note'])}</small></p>",
    ]
    if localization:
        parts.append(
            f"<h3>LocoGen: effect per window of {localization['window_size']} layers</h3>"
            f"<p>Concept “{escape(localization['concept'])}”; chosen layers {localization['chosen']}; routing every "
            f"layer: {_number(localization['full_swap_effect'])}.</p>"
            + effect_plot_svg(localization["windows"], localization["num_layers"], localization["chosen"])
        )
    columns = [f"seed {s}" for s in suite["seeds"]]
    for group in ("concept", "paraphrases", "neighbours", "unrelated"):
        items = [item for item in result["items"] if item["group"] == group]
        if not items:
            continue
        prompts: dict[int, list[dict]] = {}
        for item in items:
            prompts.setdefault(item["prompt_index"], []).append(item)
        rows = []
        for _, row in sorted(prompts.items()):
            first = row[0]
            mean_before = sum(i["score_before"] for i in row) / len(row)
            mean_after = sum(i["score_after"] for i in row) / len(row)
            label = f"“{first['prompt']}” — score of “{first['concept']}”"
            rows.append((f"{label}: before ({mean_before:.3g})", [i["before"] for i in row]))
            rows.append((f"{label}: after ({mean_after:.3g})", [i["after"] for i in row]))
        parts.append(f"<h3>{escape(_GROUP_TITLES[group])}</h3>{image_grid_html(rows, columns)}")
    return "".join(parts)


def evaluation_report_html(result: dict) -> str:
    return page(f"Evaluation: {result['suite']['name']}", evaluation_section(result))
