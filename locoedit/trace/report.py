"""The HTML page of a causal-tracing run: a heatmap of site effects per part, and the images."""

from __future__ import annotations

from html import escape

from locoedit.report.html import heatmap_svg, image_grid_html, number, page
from locoedit.trace.result import TraceResult

_PARTS = {
    "denoiser": "Denoiser sites (restored at every denoising step)",
    "text_encoder": "Text-encoder sites (restored at the concept's token while encoding)",
}


def trace_section(result: TraceResult, image_root: str = "") -> str:
    request = result.request
    rows = [f"p{p} s{s}" for p in range(len(request.prompts)) for s in request.seeds]
    parts = [
        f"<h2>Causal tracing: where is “{escape(result.concept)}”?</h2>",
        f"<p>Model <code>{escape(result.model)}</code>, scorer <code>{escape(str(request.scorer))}</code>, noise "
        f"{request.noise} x the token embeddings' std ({', '.join(f'{k}: {v:.3g}' for k, v in result.noise_sigma.items())}), "
        f"seeds {list(result.seeds)}. Clean score {number(result.clean_score)}, corrupted {number(result.corrupted_score)}, "
        f"gap {number(result.gap)}. Effect = share of the gap that restoring a site closes (1 = fully restored).</p>",
    ]
    if result.note:
        parts.append(f"<p><b>{escape(result.note)}</b></p>")
    parts.append("<ul>" + "".join(f"<li>{escape(p)}</li>" for p in request.prompts) + "</ul>")
    for part, title in _PARTS.items():
        sites = [s for s in result.sites if s.part == part]
        if not sites:
            continue
        values = [[s.effect for s in sites]] + [
            [s.effects[i] if s.effects else None for s in sites] for i in range(len(rows))
        ]
        best = result.best(part)
        parts.append(
            f"<h3>{escape(title)}</h3><p>{len(sites)} sites in execution order (hover for names)"
            + (
                f"; the strongest: <code>{escape(best.name)}</code> ({best.kind}), effect {number(best.effect)} "
                f"&plusmn; {number(best.effect_std)}"
                if best
                else ""
            )
            + ".</p>"
            + heatmap_svg(["mean"] + rows, [s.name for s in sites], values)
            + "<table class='layers'><tr><th>#</th><th>site</th><th>kind</th><th>effect</th></tr>"
            + "".join(
                f"<tr><td>{s.index}</td><td><code>{escape(s.name)}</code></td><td>{s.kind}</td>"
                f"<td>{number(s.effect)}</td></tr>"
                for s in sites
            )
            + "</table>"
        )
    grid = [("clean", result.images.clean), ("corrupted", result.images.corrupted)]
    grid += [(f"restored {name}", paths) for name, paths in result.images.restored.items()]
    parts.append(
        "<h3>Images</h3>" + image_grid_html([(label, [image_root + p for p in paths]) for label, paths in grid], rows)
    )
    return "".join(parts)


def trace_report_html(result: TraceResult) -> str:
    return page(f"Causal tracing: {result.concept}", trace_section(result))
