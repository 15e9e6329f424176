"""Choose an edit's settings on a suite's validation split, then report the choice on its test split.

``tune`` runs LocoGen once on the edit's own prompt pairs, takes its best windows, and evaluates every combination of
window x token rows x neighbour preservation x general preservation x lambda on the validation split (the unedited
images are generated once and shared). The choice rule, in order: the highest validation efficacy, counting
efficacies within ``EFFICACY_TIE`` of the best as equal; then the highest specificity; then the highest identity;
then the earlier variant of the grid. Only the chosen edit is evaluated on the test split, so the figures reported
for it were never used to choose it.

A tune folder holds ``request.json``, ``variants/NNN.json`` (one per finished variant: an interrupted tune resumes
there), ``tune.json`` (the grid with every variant's validation figures, the choice and its test figures),
``edit.safetensors`` (the chosen delta), ``test/`` (its evaluation) and ``report.html``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from locoedit.core.dtypes import dtype_named
from locoedit.core.formats import JsonRecord
from locoedit.core.io import write_text
from locoedit.core.progress import ProgressCallback, ProgressTask
from locoedit.core.runfolder import RunFolder, check_writable
from locoedit.core.versions import versions
from locoedit.edit import compute_edit
from locoedit.edit.common import with_model_defaults
from locoedit.evaluate import evaluate
from locoedit.evaluate.result import EvaluationResult, Headline
from locoedit.evaluate.suite import EvaluationSuite, suite_for_concepts
from locoedit.localize import localize
from locoedit.models import Adapter, load_adapter
from locoedit.report.html import page, percent
from locoedit.scoring import resolve_scorer
from locoedit.workflows.requests import TuneRequest

EFFICACY_TIE = 0.05
RULE = (
    f"highest validation efficacy (within {EFFICACY_TIE:.0%} of the best counts as equal), then highest "
    "specificity, then highest identity, then the earlier variant"
)


@dataclass(frozen=True)
class Variant(JsonRecord):
    """One point of the grid and its validation figures (``variants/NNN.json``)."""

    FORMAT = "locoedit.tune-variant/1"

    index: int
    layers: list[int]
    token: str
    preserve_neighbours: float
    preserve_general: float
    lam: float
    validation: Headline

    def efficacy(self) -> float:
        return _rate(self.validation.efficacy, self.validation)

    def ranking(self, best_efficacy: float) -> tuple:
        tied = self.efficacy() >= best_efficacy - EFFICACY_TIE
        return (
            tied,
            self.efficacy() if not tied else 0.0,
            _value(self.validation.specificity),
            _value(self.validation.identity),
            -self.index,
        )


def _value(rate: float | None) -> float:
    return -1.0 if rate is None else rate


def _rate(efficacy: float | None, headline: Headline) -> float:
    """Efficacy as a share of images, or (scorers that cannot tell presence) the share of concept score lost."""
    if efficacy is not None:
        return efficacy
    before = headline.concept_score_before
    return (before - headline.concept_score_after) / abs(before) if before else 0.0


def choose(variants: list[Variant]) -> Variant:
    """The variant :data:`RULE` picks, from validation figures only."""
    best = max(v.efficacy() for v in variants)
    return max(variants, key=lambda v: v.ranking(best))


@dataclass(frozen=True)
class TuneResult(JsonRecord):
    """``tune.json``."""

    FORMAT = "locoedit.tune/1"

    request: TuneRequest
    suite: str
    windows: list[list[int]]  # the LocoGen windows tried, best first
    window_effects: list[float]
    variants: list[Variant]
    chosen: int
    rule: str
    test: Headline
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=versions)


def tune(
    request: TuneRequest, out: str | Path, adapter: Adapter | None = None, progress: ProgressCallback | None = None
) -> TuneResult:
    """Evaluate the grid on the validation split, choose, write the chosen delta and its test-split evaluation."""
    out = check_writable(out)
    suite = (
        EvaluationSuite.load(request.suite)
        if request.suite
        else suite_for_concepts(request.concepts, request.model, request.kind)
    )
    validation, test = suite.split("validation"), suite.split("test")  # no split: refused before any work
    adapter = adapter or load_adapter(request.model, dtype_named(request.dtype), request.device)
    scorer = resolve_scorer(suite.scorer, None, adapter)
    folder = RunFolder(out)
    folder.claim(request)
    started = time.perf_counter()

    base = with_model_defaults(request.edit_request("auto", *_first(request)), adapter)
    localization = localize(
        base.localization(base.pairs()),
        adapter=adapter,
        scorer=scorer,
        out=out / "localization",
        progress=progress,
    )
    ranked = sorted(localization.windows, key=lambda w: -w.effect)[: request.windows]
    grid = list(
        itertools.product(
            [w.layers for w in ranked],
            request.tokens,
            request.preserve_neighbours,
            request.preserve_general,
            request.lambdas,
        )
    )
    settings = adapter.settings(suite.steps, suite.guidance, suite.size, suite.size)
    variants = _evaluate_grid(request, grid, adapter, validation, scorer, settings, out, progress)
    chosen = choose(variants)
    delta = compute_edit(
        adapter,
        request.edit_request(
            tuple(chosen.layers), chosen.token, chosen.preserve_neighbours, chosen.preserve_general, chosen.lam
        ),
    )
    delta.save(out / "edit.safetensors")
    tested = evaluate(
        adapter,
        delta,
        test,
        scorer,
        out=out / "test",
        settings=settings,
        progress=progress,
        delta_path=str(out / "edit.safetensors"),
    )
    result = TuneResult(
        request,
        suite.name,
        [w.layers for w in ranked],
        [w.effect for w in ranked],
        variants,
        chosen.index,
        RULE,
        tested.headline,
        {"total_s": time.perf_counter() - started},
    )
    result.write(out / "tune.json")
    write_text(out / "report.html", tune_report_html(result))
    return result


def _evaluate_grid(request, grid, adapter, validation, scorer, settings, out: Path, progress) -> list[Variant]:
    """Every variant of the grid evaluated on the validation split (one shared set of unedited images); a variant
    already recorded in ``out/variants`` is read back, so an interrupted tune resumes."""
    task = ProgressTask(progress, f"tuning on {validation.name}", len(grid), unit="variant")
    unedited: EvaluationResult | None = None
    variants = []
    for index, (layers, token, neighbours, general, lam) in enumerate(grid):
        record = out / "variants" / f"{index:03d}.json"
        if record.is_file():
            variants.append(Variant.read(record))
            task.advance()
            continue
        edit = request.edit_request(tuple(layers), token, neighbours, general, lam)
        delta = compute_edit(adapter, edit)
        result = evaluate(adapter, delta, validation, scorer, settings=settings, reuse=unedited)
        unedited = unedited or result
        variant = Variant(index, list(layers), token, neighbours, general, lam, result.headline)
        variant.write(record)
        variants.append(variant)
        task.advance()
    return variants


def _first(request: TuneRequest) -> tuple:
    return request.tokens[0], request.preserve_neighbours[0], request.preserve_general[0], request.lambdas[0]


def tune_report_html(result: TuneResult) -> str:
    """The grid as a table (the chosen row marked) and the chosen edit's test figures, linking its report."""
    rows = "".join(
        f"<tr{' class=chosen' if v.index == result.chosen else ''}><td>{v.index}</td>"
        f"<td>{'-'.join(map(str, (v.layers[0], v.layers[-1])))}</td><td>{escape(v.token)}</td>"
        f"<td>{v.preserve_neighbours:g}</td><td>{v.preserve_general:g}</td><td>{v.lam:g}</td>"
        f"<td>{percent(v.validation.efficacy)}</td><td>{percent(v.validation.generalization)}</td>"
        f"<td>{percent(v.validation.specificity)}</td><td>{percent(v.validation.identity)}</td></tr>"
        for v in result.variants
    )
    chosen, test = result.variants[result.chosen], result.test
    body = (
        f"<h1>Tuned edit: {escape(', '.join(result.request.concepts))}</h1>"
        f"<p>Suite <code>{escape(result.suite)}</code>. Chosen on the validation split by: {escape(result.rule)}.</p>"
        f"<h2>The choice on the test split</h2><p>Variant {chosen.index} (layers {chosen.layers}, "
        f"{escape(chosen.token)} rows, neighbours {chosen.preserve_neighbours:g}, general {chosen.preserve_general:g}, "
        f"lambda {chosen.lam:g}): efficacy {percent(test.efficacy)}, generalization {percent(test.generalization)}, "
        f"specificity {percent(test.specificity)}, identity {percent(test.identity)}. "
        "<a href='test/report.html'>Its evaluation report</a>, <a href='tune.json'>tune.json</a>, "
        "<a href='edit.safetensors'>the delta</a>.</p>"
        "<h2>Validation grid</h2><table><tr><th>#</th><th>layers</th><th>rows</th><th>neighbours</th><th>general</th>"
        f"<th>lambda</th><th>efficacy</th><th>generalization</th><th>specificity</th><th>identity</th></tr>{rows}</table>"
    )
    return page("locoedit tune", "<style>tr.chosen td { background: #e6f4ea; font-weight: bold; }</style>" + body)
