"""HTML building blocks for reports: the page, image grids, per-layer effect plots (inline SVG), number formats.

Each stage renders its own section from its typed result with these (``locoedit.localize.report``,
``locoedit.evaluate.report``)."""

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


def effect_plot_svg(windows, num_layers: int, chosen: list[int], width: int = 640, height: int = 240) -> str:
    """Bar per window (anything with ``layers``, ``effect`` and ``effect_std``) at its first layer, with +- one
    standard deviation; the chosen window in red."""
    left, bottom, top, right = 50, 40, 20, 10
    values = [w.effect for w in windows]
    spreads = [w.effect_std for w in windows]
    high = max([v + s for v, s in zip(values, spreads)] + [1e-9])
    low = min([v - s for v, s in zip(values, spreads)] + [0.0])
    plot_w, plot_h = width - left - right, height - top - bottom
    y = lambda v: top + plot_h * (high - v) / (high - low)
    slot = plot_w / max(num_layers, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    parts.append(f'<line x1="{left}" y1="{y(0):.1f}" x2="{width - right}" y2="{y(0):.1f}" stroke="#888"/>')
    for window, value, spread in zip(windows, values, spreads):
        start = window.layers[0]
        x = left + slot * start + slot * 0.15
        colour = "#c0392b" if list(window.layers) == list(chosen) else "#2980b9"
        top_y, base_y = sorted((y(value), y(0)))
        label = f"layers {list(window.layers)}: effect {value:.4g} +- {spread:.2g}"
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
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 8}" font-size="11" text-anchor="middle">'
        "first layer of the window</text>"
    )
    for value in (low, (low + high) / 2, high):
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" font-size="10" text-anchor="end">{value:.3g}</text>')
    parts.append(
        f'<text x="12" y="{top + plot_h / 2}" font-size="11" transform="rotate(-90 12 {top + plot_h / 2})" '
        'text-anchor="middle">effect</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def image_grid_html(rows: list[tuple[str, list[str]]], columns: list[str], highlight: str | None = None) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns[:MAX_COLUMNS])
    body = []
    for label, paths in rows:
        cls = ' class="chosen"' if label == highlight else ""
        cells = "".join(
            f'<td><img src="{escape(p)}" alt="{escape(label)} {i}"></td>' for i, p in enumerate(paths[:MAX_COLUMNS])
        )
        body.append(f"<tr{cls}><th>{escape(label)}</th>{cells}</tr>")
    return f'<table class="grid"><tr><th></th>{head}</tr>{"".join(body)}</table>'


def page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>\n"
    )


def number(value, digits: int = 3) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def percent(value) -> str:
    return "&ndash;" if value is None else f"{100 * value:.1f}%"


def _heat_colour(value: float | None) -> str:
    """0 white, 1 (or more) deep red; negative values blue; None grey."""
    if value is None:
        return "#ddd"
    strength = min(abs(value), 1.0)
    fade = round(255 * (1 - strength))
    return f"rgb(255,{fade},{fade})" if value >= 0 else f"rgb({fade},{fade},255)"


def heatmap_svg(row_labels: list[str], columns: list[str], values: list[list[float | None]], cell: int = 14) -> str:
    """A grid of ``values`` [rows][columns] coloured by size (effect 0..1), column names as tooltips and every
    fifth column numbered; the column order is the caller's (execution order)."""
    left, top = 110, 8
    width, height = left + cell * len(columns) + 10, top + cell * len(row_labels) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for r, (label, row) in enumerate(zip(row_labels, values)):
        y = top + r * cell
        parts.append(f'<text x="{left - 6}" y="{y + cell - 3}" font-size="10" text-anchor="end">{escape(label)}</text>')
        for c, (name, value) in enumerate(zip(columns, row)):
            shown = "not defined" if value is None else f"{value:.3g}"
            parts.append(
                f'<rect x="{left + c * cell}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                f'fill="{_heat_colour(value)}"><title>{escape(name)}: {shown}</title></rect>'
            )
    for c in range(0, len(columns), 5):
        parts.append(
            f'<text x="{left + c * cell + cell / 2}" y="{top + len(row_labels) * cell + 12}" font-size="10" '
            f'text-anchor="middle">{c}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
