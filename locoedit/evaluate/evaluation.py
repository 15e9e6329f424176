"""Evaluate an edit: did the concept go (efficacy, generalization), and what else changed (specificity, quality)?

:func:`evaluate` generates every (prompt, seed) of a suite with the unedited model, generates them again with the
delta installed (same seeds), which reverts it afterwards, even after an error: the model is left exactly as it was
found. Then it scores both sets (:mod:`locoedit.evaluate.result` defines the metrics).
"""

from __future__ import annotations

import logging
import time
import typing
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from locoedit.core.dtypes import dtype_named
from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord
from locoedit.core.io import write_png, write_text
from locoedit.core.progress import ProgressCallback, ProgressTask
from locoedit.core.runfolder import RunFolder, check_writable
from locoedit.delta.file import EditDelta
from locoedit.evaluate.metrics import psnr, ssim
from locoedit.evaluate.report import evaluation_report_html
from locoedit.evaluate.request import EvaluationRequest
from locoedit.evaluate.result import DeltaSummary, EffectCurve, EvaluationItem, EvaluationResult, Metrics
from locoedit.evaluate.suite import EvaluationSuite, suite_for_delta
from locoedit.localize import LocalizationResult
from locoedit.localize.result import RESULT_FILE
from locoedit.models import Adapter, EncodedPrompts, GenerationSettings, load_adapter
from locoedit.scoring import ConceptScorer, Scorer, resolve_scorer

logger = logging.getLogger(__name__)

RESULT_FILE_NAME = "evaluation.json"


def _generate(
    adapter: Adapter,
    encoded: EncodedPrompts,
    rows: list[int],
    seeds: list[int],
    settings: GenerationSettings,
    batch_size: int,
    task: ProgressTask,
    folder: EvaluationFolder | None,
    group: str,
    interventions=(),
) -> torch.Tensor:  # [rows, 3, H, W]
    """The images of ``rows``, ``batch_size`` at a time; with a folder, each batch is kept as it is finished and a
    resumed run takes the kept ones instead of generating them again."""
    images = []
    for start in range(0, len(rows), batch_size):
        chunk, name = slice(start, start + batch_size), f"{group}_{start:06d}"
        kept = folder.load_tensors(name) if folder is not None else None
        if kept is None:
            generated = adapter.generate(encoded.take(rows[chunk]), seeds[chunk], settings, interventions, task.advance)
            if folder is not None:
                folder.save_tensors(name, {"images": generated})
        else:
            generated = kept["images"]
            task.advance(settings.num_inference_steps)
        images.append(generated)
    return torch.cat(images)


def effect_curve(source: str | Path | LocalizationResult | EffectCurve) -> EffectCurve:
    """The per-window effects of a LocoGen run (its folder, its ``localization.json``, or the result itself)."""
    if isinstance(source, EffectCurve):
        return source
    if isinstance(source, LocalizationResult):
        return EffectCurve.of(source, "the given localization")
    path = Path(source)
    return EffectCurve.of(LocalizationResult.load(path), str(path / RESULT_FILE if path.is_dir() else path))


def _curve_of_delta(delta: EditDelta) -> EffectCurve | None:
    layers = delta.settings.get("layers")
    if isinstance(layers, str) and layers != "auto" and (Path(layers) / RESULT_FILE).is_file():
        try:
            return effect_curve(layers)
        except LocoeditError as error:
            logger.warning("ignoring the delta's localization: %s", error)
    return None


@dataclass(frozen=True)
class EvaluationRun(JsonRecord):
    """What makes two evaluations the same run (the folder's ``request.json``): rerunning it resumes."""

    FORMAT = "locoedit.evaluation-run/1"

    delta: str  # sha256 of the delta's metadata, which holds the checksum of every value it writes
    suite: EvaluationSuite
    settings: GenerationSettings
    scorer: str
    batch_size: int


class EvaluationFolder(RunFolder):
    """Where an evaluation is written: images/{before,after}/GROUP/pI_sS.png, evaluation.json, report.html, and the
    images of finished batches under progress/ while it runs."""

    def write(self, result: EvaluationResult) -> None:
        assert result.before is not None and result.after is not None  # written by evaluate(), images in memory
        for item, before, after in zip(result.items, result.before, result.after):
            write_png(self.path / item.before, before)
            write_png(self.path / item.after, after)
        result.write(self.path / RESULT_FILE_NAME)
        write_text(self.path / "report.html", evaluation_report_html(result))


def _check_reuse(reuse: EvaluationResult, items, settings: GenerationSettings) -> None:
    if (
        reuse.before is None
        or [(r.prompt, r.seed) for r in reuse.items] != [(r.prompt, r.seed) for r in items]
        or reuse.settings != settings
    ):
        raise LocoeditError(
            "reuse: the earlier result was generated from other prompts, seeds or settings (or holds no images); "
            "reuse only a result of the same suite and settings"
        )


def evaluate(
    adapter: Adapter,
    delta: EditDelta,
    suite: EvaluationSuite,
    scorer: Scorer,
    out: str | Path | None = None,
    settings: GenerationSettings | None = None,
    localization: str | Path | LocalizationResult | EffectCurve | None = None,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
    delta_path: str | None = None,
    reuse: EvaluationResult | None = None,
) -> EvaluationResult:
    """Evaluate ``delta`` on ``adapter``'s model with ``suite``: generate before, then after with the delta
    installed (same seeds; reverted afterwards), score. The model is left exactly as found; it is never reloaded.

    ``settings`` defaults to the suite's (else the model's) steps, guidance and size. ``localization`` (a LocoGen run
    folder, its ``localization.json``, or the result; default: the run folder the delta's layers came from, if any)
    adds the per-layer effect curve to the report. With ``out``, writes images, ``evaluation.json`` and
    ``report.html`` there.

    ``reuse``: an earlier result of the same unedited model with the same suite items and settings (e.g. another
    edit of the same concept); its "before" images are taken instead of generated again. The caller vouches that the
    model is the same; prompts, seeds and settings are checked.
    """
    if not isinstance(scorer, ConceptScorer):
        raise LocoeditError(
            f"scorer {scorer.spec!r} cannot score a concept in a single image; evaluation needs 'toyworld' or "
            "'clip:ID_OR_FOLDER'"
        )
    if batch_size < 1:
        raise LocoeditError(f"batch_size {batch_size} must be >= 1")
    delta.check(adapter)  # another model, or an edit already applied: refuse before generating anything
    for concept in suite.concepts:
        scorer.check_concept(concept)
    curve = effect_curve(localization) if localization is not None else _curve_of_delta(delta)
    settings = settings or adapter.settings(suite.steps, suite.guidance, suite.size, suite.size)
    items = suite.items()
    if reuse is not None:
        _check_reuse(reuse, items, settings)
    folder = EvaluationFolder(out) if out is not None else None
    if folder is not None:
        folder.claim(EvaluationRun(delta.digest(), suite, settings, scorer.spec, batch_size))
    started = time.perf_counter()
    prompts = list(dict.fromkeys(item.prompt for item in items))
    encoded = adapter.encode(prompts)
    rows = [prompts.index(item.prompt) for item in items]
    seeds = [item.seed for item in items]
    loops = (1 if reuse is not None else 2) * -(-len(items) // batch_size)
    task = ProgressTask(progress, f"evaluating {suite.name}", loops * settings.num_inference_steps)
    before = (
        typing.cast(torch.Tensor, reuse.before)  # _check_reuse refuses a result that holds no images
        if reuse is not None
        else _generate(adapter, encoded, rows, seeds, settings, batch_size, task, folder, "before")
    )
    after = _generate(adapter, encoded, rows, seeds, settings, batch_size, task, folder, "after", [delta])
    generation_s = time.perf_counter() - started

    started = time.perf_counter()
    scored, features = _score(scorer, suite, items, before, after, edit_target(delta, scorer))
    metrics = Metrics.of(scored, scorer, suite.concept, features)
    timings = {"generation_s": generation_s, "scoring_s": time.perf_counter() - started}
    result = EvaluationResult(
        suite,
        settings,
        scorer.spec,
        DeltaSummary.of(delta, delta_path),
        scored,
        metrics,
        curve,
        timings,
        before=before,
        after=after,
    )
    if folder is not None:
        folder.write(result)
    return result


def edit_target(delta: EditDelta, scorer: ConceptScorer) -> str | None:
    """The one target the edit gives its concepts, when the scorer can tell it in an image; None for a removal, an
    edit with several targets, or a target the scorer cannot read (target adoption is then not measured)."""
    targets = {str(t).strip() for t in delta.settings.get("targets", [])}
    if len(targets) != 1:
        return None
    target = targets.pop()
    return target if scorer.reads_target(target) else None


def _score(
    scorer: ConceptScorer,
    suite: EvaluationSuite,
    items: list,
    before: torch.Tensor,
    after: torch.Tensor,
    target: str | None = None,
) -> tuple[list[EvaluationItem], tuple | None]:
    """Every item scored before and after (concept score, similarity, attributes read, whether neighbours and
    unrelated images still show their prompt, whether concept images show the edit's ``target``), and the scorer's
    image features of both sets (None without)."""
    scores_before = torch.empty(len(items))
    scores_after = torch.empty(len(items))
    for concept in suite.concepts:
        index = torch.tensor([i for i, item in enumerate(items) if item.concept == concept])
        scores_before[index] = scorer.score(before[index], concept).float()
        scores_after[index] = scorer.score(after[index], concept).float()
    similarity, peak = ssim(before, after), psnr(before, after)
    attributes_before, attributes_after = scorer.predict(before), scorer.predict(after)
    others = [i for i, item in enumerate(items) if item.group in ("neighbours", "unrelated", "lookalikes")]
    follows = {}
    if others:
        other_prompts, other_concepts = [items[i].prompt for i in others], [items[i].concept for i in others]
        for name, images in (("follows_before", before), ("follows_after", after)):
            shown = scorer.follows(images[others], other_prompts, other_concepts, suite.concepts)
            follows[name] = dict(zip(others, shown))
    shows_concept = [i for i, item in enumerate(items) if item.group in ("concept", "paraphrases")]
    if target is not None and shows_concept:
        for name, images in (("adopted_before", before), ("adopted_after", after)):
            adopted = scorer.adopts(images[shows_concept], target, suite.concept)
            follows[name] = dict(zip(shows_concept, adopted))
    features_before = scorer.features(before)
    features = None if features_before is None else (features_before, scorer.features(after))
    scored = [
        EvaluationItem.of(
            item,
            score_before=scores_before[i].item(),
            score_after=scores_after[i].item(),
            ssim=similarity[i].item(),
            psnr=peak[i].item(),
            attributes_before=None if attributes_before is None else attributes_before[i],
            attributes_after=None if attributes_after is None else attributes_after[i],
            **{name: values.get(i) for name, values in follows.items()},
        )
        for i, item in enumerate(items)
    ]
    return scored, features


def evaluate_from_request(
    request: EvaluationRequest,
    out: str | Path,
    adapter: Adapter | None = None,
    scorer: Scorer | None = None,
    progress: ProgressCallback | None = None,
) -> EvaluationResult:
    """Load the delta (first: bad input fails before the model loads), the suite, the model and the scorer; evaluate."""
    check_writable(out)
    delta = EditDelta.load(request.edit)
    suite = EvaluationSuite.load(request.suite) if request.suite else suite_for_delta(delta, request.model)
    if request.seeds:
        suite = replace(suite, seeds=request.seeds)
    curve = effect_curve(request.localization) if request.localization else None
    if scorer is None and (request.scorer or suite.scorer) == "pixel":
        raise LocoeditError(
            "scorer 'pixel' cannot score a concept in a single image; evaluation needs 'toyworld' or "
            "'clip:ID_OR_FOLDER'"
        )
    if adapter is None:
        dtype = dtype_named(request.dtype) if request.dtype else delta.dtype
        adapter = load_adapter(request.model, dtype, request.device)
    delta.check(adapter)
    scorer = resolve_scorer(request.scorer or suite.scorer, scorer, adapter)
    settings = adapter.settings(
        request.steps or suite.steps,
        request.guidance if request.guidance is not None else suite.guidance,
        request.size or suite.size,
        request.size or suite.size,
    )
    return evaluate(
        adapter,
        delta,
        suite,
        scorer,
        out=out,
        settings=settings,
        localization=curve,
        batch_size=request.batch_size,
        delta_path=str(request.edit),
        progress=progress,
    )
