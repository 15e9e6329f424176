"""The HTML section and page of an evaluation: metric table, effect curve, before/after grids per prompt group."""

from __future__ import annotations

from html import escape

from locoedit.evaluate.result import TARGETS, EvaluationResult
from locoedit.evaluate.suite import GROUPS
from locoedit.report.html import effect_plot_svg, image_grid_html, number, page, percent

_GROUP_TITLES = {
    "concept": "Concept prompts (efficacy)",
    "paraphrases": "Paraphrases (generalization)",
    "neighbours": "Neighbouring concepts (specificity)",
    "unrelated": "Unrelated prompts (specificity)",
    "lookalikes": "Look-alikes: prompts entangled with the concept (specificity)",
}


def _metric_rows(result: EvaluationResult) -> list[tuple[str, str, str, str, str]]:
    """(metric, before, after, change, target) rows of the evaluation's table."""
    metrics, meets = result.metrics, result.meets_targets()

    def target(name):
        if meets.get(name) is None:
            return ""
        return f"&ge; {percent(TARGETS[name])} {'&#10003;' if meets[name] else '&#10007; missed'}"

    rows = []
    for name, label, entry in (
        ("efficacy", "concept prompts", metrics.efficacy),
        ("generalization", "paraphrases", metrics.generalization),
    ):
        if entry is None:
            rows.append((f"{name} ({label})", "not measured (no prompts)", "", "", ""))
            continue
        rows.append(
            (
                f"{name}: mean concept score ({label})",
                number(entry.score.before),
                number(entry.score.after),
                number(entry.score.change),
                "",
            )
        )
        if entry.rate is not None:
            rows.append(
                (
                    f"{name}: concept absent ({label})",
                    percent(entry.absent_before),
                    percent(entry.absent_after),
                    "",
                    target(name),
                )
            )
        if entry.adopted_after is not None:
            rows.append(
                (
                    f"target adoption: the edit's target shown ({label})",
                    percent(entry.adopted_before),
                    percent(entry.adopted_after),
                    "",
                    target("adoption") if name == "efficacy" else "",
                )
            )
    rows += _specificity_rows(metrics.specificity, target)
    quality = metrics.quality
    if quality.frechet_distance is not None:
        rows.append(
            (
                f"quality: Frechet distance before vs after ({quality.features})",
                "",
                number(quality.frechet_distance),
                "",
                "",
            )
        )
    return rows


def _specificity_rows(specificity, target) -> list[tuple[str, str, str, str, str]]:
    """The specificity rows: per group, own-concept score, attributes and similarity; the share of images still
    showing their prompt; identity; other attributes of the concept prompts."""
    rows = []
    for group, entry in (("neighbours", specificity.neighbours), ("unrelated", specificity.unrelated)):
        if entry is None:
            continue
        rows.append(
            (
                f"specificity: own-concept score ({group})",
                number(entry.score.before),
                number(entry.score.after),
                number(entry.score.change),
                "",
            )
        )
        if entry.attributes_unchanged is not None:
            rows.append(
                (f"specificity: attributes unchanged ({group})", "", percent(entry.attributes_unchanged), "", "")
            )
        rows.append(
            (
                f"specificity: SSIM / PSNR to unedited ({group})",
                "",
                f"{number(entry.ssim)} / {number(entry.psnr)} dB",
                "",
                "",
            )
        )
    if specificity.follows_before is not None:
        rows.append(
            (
                "specificity: neighbour and unrelated images showing what their prompt asks",
                percent(specificity.follows_before),
                percent(specificity.follows_after),
                f"{percent(specificity.rate)} of before" if specificity.rate is not None else "",
                target("specificity"),
            )
        )
    if specificity.lookalikes_rate is not None:
        rows.append(
            (
                "specificity: look-alike images (prompts entangled with the concept) showing what their prompt asks",
                "",
                "",
                f"{percent(specificity.lookalikes_rate)} of before",
                target("lookalikes"),
            )
        )
    if specificity.identity is not None:
        rows.append(
            (f"identity: {specificity.identity_basis}", "", percent(specificity.identity), "", target("identity"))
        )
    other = specificity.other_attributes
    if other is not None:
        ignored = ", ".join(other.ignored) or "none"
        rows.append(
            (f"other attributes unchanged on concept prompts (ignoring {ignored})", "", percent(other.rate), "", "")
        )
    return rows


def evaluation_section(result: EvaluationResult, image_root: str = "", data_link: str = "evaluation.json") -> str:
    """Metric table, the effect curve of the localization (if known), and before/after grids per prompt group.

    ``image_root`` is prepended to image paths and ``data_link`` is where the link to the result's JSON points (set
    both when embedding the section in a page that lives in another folder).
    """
    suite, delta, curve = result.suite, result.delta, result.localization
    table = "".join(
        f"<tr><td>{escape(name)}</td><td>{before}</td><td>{after}</td><td>{change}</td><td>{target}</td></tr>"
        for name, before, after, change, target in _metric_rows(result)
    )
    layers = ", ".join(f"{layer['index']} (<code>{escape(layer['name'])}</code>)" for layer in delta.layers)
    edited = delta.settings.get("concepts")
    targets = delta.settings.get("targets")
    what = ""
    if edited and targets:
        shown = [f"“{escape(t)}”" if t.strip() else "(removed)" for t in targets]
        what = f"“{escape(', '.join(edited))}” &rarr; {', '.join(shown)}"
    parts = [
        f"<h2>Evaluation: {escape(suite.name)}</h2>",
        f"<p>{escape(suite.description)}</p>",
        f"<p>Edit {what} by <code>{escape(delta.method)}</code> on layers {layers}; base model "
        f"<code>{escape(delta.base_model)}</code>. Scored concept “{escape(suite.concept)}” with "
        f"<code>{escape(result.scorer)}</code>; seeds {list(suite.seeds)}; {result.settings.num_inference_steps} "
        f"steps, guidance {result.settings.guidance_scale}. Before and after use the same seeds.</p>",
        f"<p>Data: <a href='{escape(data_link)}'>evaluation.json</a></p>",
        "<h3>Metrics</h3><table class='layers metrics'><tr><th>metric</th><th>before edit</th><th>after edit</th>"
        f"<th>change</th><th>target</th></tr>{table}</table>",
        f"<p><small>{escape(result.metrics.quality.inception_fid_note)}</small></p>",
    ]
    entangled = delta.settings.get("entangled") or []
    if entangled:
        mined = "".join(
            f"<tr><td>{escape(e['prompt'])}</td><td>{escape(e['source'])}</td><td>{number(e['entanglement'])}</td></tr>"
            for e in entangled
        )
        kept = delta.settings.get("preserve_nearest_weight", 1) > 0
        title = "the edit preserved" if kept else "mined, not preserved (--preserve-nearest-weight 0)"
        parts.append(
            f"<h3>Entangled prompts {title}</h3><p>Mined before solving (<code>--preserve-nearest</code>): "
            "the prompts, naming no edited concept, that the edit without them would move most, relative to the "
            "concept's own rows.</p><table class='layers'><tr><th>prompt</th><th>found in</th><th>entanglement</th>"
            f"</tr>{mined}</table>"
        )
    if curve is not None:
        parts.append(
            f"<h3>LocoGen: effect per window of {curve.window_size} layers</h3>"
            f"<p>Concept “{escape(curve.concept)}”; chosen layers {curve.chosen}; routing every "
            f"layer: {number(curve.full_swap_effect)}.</p>"
            + effect_plot_svg(curve.windows, curve.num_layers, curve.chosen)
        )
    columns = [f"seed {s}" for s in suite.seeds]
    for group in GROUPS:
        prompts: dict[int, list] = {}
        for item in result.items:
            if item.group == group:
                prompts.setdefault(item.prompt_index, []).append(item)
        if not prompts:
            continue
        rows = []
        for _, row in sorted(prompts.items()):
            first = row[0]
            mean_before = sum(i.score_before for i in row) / len(row)
            mean_after = sum(i.score_after for i in row) / len(row)
            label = f"“{first.prompt}” — score of “{first.concept}”"
            rows.append((f"{label}: before ({mean_before:.3g})", [image_root + i.before for i in row]))
            rows.append((f"{label}: after ({mean_after:.3g})", [image_root + i.after for i in row]))
        parts.append(f"<h3>{escape(_GROUP_TITLES[group])}</h3>{image_grid_html(rows, columns)}")
    return "".join(parts)


def evaluation_report_html(result: EvaluationResult) -> str:
    return page(f"Evaluation: {result.suite.name}", evaluation_section(result))
