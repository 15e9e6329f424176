"""``locoedit demo``: the whole story on the shipped toy world, with no downloads.

For each case of ``locoedit/data/demo.json`` (a style, an object, a fact, three styles at once), with LocoEdit's
plain defaults: LocoGen localizes the edit on its own prompt pairs, LocoEdit edits the chosen layers, and the edit
is evaluated on its suite's test split against the probe's ground truth, side by side with the same edit of every
layer and of a random window of the same size (the paper's controls), plus one neuron-level edit; on the toy MMDiT
also UCE's shortcut (``context_embedder`` alone, `locoedit context-edit`). Writes one HTML
report, ``demo.json``, and prints a summary table.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord
from locoedit.core.io import write_text
from locoedit.core.progress import ProgressCallback
from locoedit.core.runfolder import RunFolder, check_writable
from locoedit.delta.file import EditDelta
from locoedit.edit import ContextEmbedderRequest, EditRequest, NeuronRequest, compute_edit
from locoedit.edit.common import with_model_defaults
from locoedit.edit.layers import auto_localize
from locoedit.edit.request import layer_span
from locoedit.evaluate import EvaluationSuite, Headline, evaluate
from locoedit.evaluate.report import evaluation_section
from locoedit.localize.report import localization_section
from locoedit.models import Adapter, load_adapter
from locoedit.report.html import page
from locoedit.scoring import make_scorer, scorer_spec_for

logger = logging.getLogger(__name__)

DEMO_FILE = Path(__file__).parents[1] / "data" / "demo.json"
DEMO_MODELS = ("toyworld", "toyworld-mmdit")
CONTEXT_BASELINE = "uce-context"  # the variant of a joint model's cases that edits context_embedder alone  # the world its suites and probe describe, denoised by a UNet or an MMDiT


@dataclass(frozen=True)
class DemoRow:
    kind: str  # the case
    variant: str
    layers: list[int]
    headline: Headline
    report: str  # path of the evaluation's own report, relative to the demo folder
    suite: str = ""


@dataclass(frozen=True)
class DemoRecord(JsonRecord):
    """``demo.json``: one row per (case, edit variant, suite)."""

    FORMAT = "locoedit.demo/1"

    model: str
    rows: list[DemoRow]
    minutes: float
    seeds: dict[str, int] = field(default_factory=dict)  # per stage: localize, evaluation


@dataclass(frozen=True)
class DemoRun(JsonRecord):
    """What makes two demos the same run (the folder's ``request.json``): rerunning it resumes where it stopped."""

    FORMAT = "locoedit.demo-run/1"

    plan: dict
    seeds: int | None = None


def _random_window(num_layers: int, size: int, avoid: list[int], seed: int) -> list[int]:
    starts = [s for s in range(num_layers - size + 1) if s != avoid[0]]
    start = random.Random(seed).choice(starts)
    return list(range(start, start + size))


def run_demo(
    out: str | Path = "runs/demo",
    adapter: Adapter | None = None,
    seeds: int | None = None,
    progress: ProgressCallback | None = None,
    model: str | None = None,
) -> list[DemoRow]:
    """Run the demo into ``out``, on ``model`` (a shipped toy model: ``toyworld``, the plan's, or ``toyworld-mmdit``).
    ``seeds`` (per prompt) overrides the plan's, for smoke runs; the README's figures use the plan's."""
    out = check_writable(out)
    if seeds is not None and seeds < 1:
        raise LocoeditError(f"seeds {seeds} must be >= 1")
    if model is not None and model not in DEMO_MODELS:
        raise LocoeditError(f"--model {model!r} is not a shipped toy model; use one of {', '.join(DEMO_MODELS)}")
    plan = json.loads(DEMO_FILE.read_text())
    plan["model"] = model or plan["model"]
    RunFolder(out).claim(DemoRun(plan, seeds))  # another run's folder is refused; this one's resumes
    started = time.perf_counter()
    model = plan["model"]
    adapter = adapter or load_adapter(model, device="cpu")
    scorer = make_scorer(scorer_spec_for(adapter))
    localize_seeds = tuple(range(seeds or plan["localize_seeds"]))
    evaluation_seeds = tuple(range(seeds or plan["evaluation_seeds"]))
    rows: list[DemoRow] = []
    sections = []
    for case in plan["cases"]:
        name = case["name"]
        case_dir = out / name.replace(" ", "-")
        request = with_model_defaults(
            EditRequest(
                model=model,
                concepts=tuple(case["concepts"]),
                targets=tuple(case["targets"]),
                kind=case["kind"],
                auto_seeds=localize_seeds,
            ),
            adapter,
        )
        localizations = auto_localize(adapter, request, scorer, progress, out=case_dir)
        case_sections = [
            localization_section(result, image_root=f"{case_dir.name}/{folder}/") for folder, result in localizations
        ]
        localized = _saved_or_computed(
            adapter, request, case_dir, "localized", progress=progress, localizations=localizations
        )
        chosen = [layer["index"] for layer in localized.layers]  # LocoGen's windows, widened if they had to be
        request = replace(request, layers=tuple(chosen))
        variants = _variants(adapter, request, chosen, case, localized, seed=len(rows), case_dir=case_dir)
        case_sections += _evaluate_case(adapter, case, case_dir, variants, scorer, evaluation_seeds, rows, progress)
        concepts = ", ".join(request.concepts)
        sections.append(f"<section id='{case_dir.name}'><h1>{name}: {concepts}</h1>{''.join(case_sections)}</section>")
    summary = DemoRecord(
        model,
        rows,
        (time.perf_counter() - started) / 60,
        {"localize": len(localize_seeds), "evaluation": len(evaluation_seeds)},
    )
    summary.write(out / "demo.json")
    write_text(out / "report.html", page("locoedit demo", summary_table_html(rows) + "".join(sections)))
    return rows


def _evaluate_case(
    adapter, case: dict, case_dir: Path, variants, scorer, evaluation_seeds, rows, progress
) -> list[str]:
    """Each variant of a case evaluated on each of its suites (the unedited images shared); its row appended to
    ``rows``; the report sections of the localized edit returned."""
    case_sections = []
    name = case["name"]
    for suite_name in case["suites"]:
        suite = replace(EvaluationSuite.load(suite_name).split("test"), seeds=evaluation_seeds)
        unedited = None  # every variant is compared with the same unedited images
        for variant, (layers, delta) in variants.items():
            folder = variant.replace(" ", "-") + ("" if len(case["suites"]) == 1 else f"-{suite_name}")
            delta.save(case_dir / f"{variant.replace(' ', '-')}.safetensors")
            result = evaluate(
                adapter,
                delta,
                suite,
                scorer,
                out=case_dir / folder,
                progress=progress,
                reuse=unedited,
                localization=case_dir / "localize",
            )
            unedited = unedited or result
            rows.append(
                DemoRow(name, variant, layers, result.headline, f"{case_dir.name}/{folder}/report.html", suite_name)
            )
            if variant == "localized":
                case_sections.append(
                    evaluation_section(
                        result,
                        image_root=f"{case_dir.name}/{folder}/",
                        data_link=f"{case_dir.name}/{folder}/evaluation.json",
                    )
                )
    return case_sections


def _saved_or_computed(adapter: Adapter, request, case_dir: Path, variant: str, **options) -> EditDelta:
    """The variant's edit as the case folder holds it (a resumed demo), else computed (``options``: those of
    :func:`~locoedit.edit.compute_edit`)."""
    saved = case_dir / f"{variant.replace(' ', '-')}.safetensors"
    return EditDelta.load(saved) if saved.is_file() else compute_edit(adapter, request, **options)


def _variants(
    adapter: Adapter,
    request: EditRequest,
    chosen: list[int],
    case: dict,
    localized: EditDelta,
    seed: int,
    case_dir: Path,
) -> dict[str, tuple[list[int], EditDelta]]:
    """The edits a demo case evaluates: the ``localized`` one (on ``chosen``) and, as the case asks, the paper's
    controls (every layer; a random window of the same size), UCE's shortcut on a joint model, and a neuron-level
    edit of the same layers. An edit the case folder already holds (a resumed demo) is read back, not computed
    again."""

    def edit(request, variant: str) -> EditDelta:
        return _saved_or_computed(adapter, request, case_dir, variant)

    num_layers = len(adapter.layers)
    variants: dict[str, tuple[list[int], EditDelta]] = {"localized": (chosen, localized)}
    if case["controls"]:
        variants["all layers"] = (
            list(range(num_layers)),
            edit(replace(request, layers=tuple(range(num_layers))), "all layers"),
        )
        random_window = _random_window(num_layers, len(chosen), chosen, seed=seed)
        variants["random window"] = (
            random_window,
            edit(replace(request, layers=tuple(random_window)), "random window"),
        )
    if case["controls"] and adapter.joint_attention:  # UCE's shortcut, the baseline on SD3/FLUX: no localization
        baseline = ContextEmbedderRequest(
            model=request.model,
            concepts=request.concepts,
            targets=request.targets,
            kind=request.kind,
            prompts=request.prompts,
            token=request.token,
        )
        variants[CONTEXT_BASELINE] = ([], edit(baseline, CONTEXT_BASELINE))
    if case["neurons"]:
        # The neutral prompts are the edit's target prompts: the same scenes without the concept.
        neurons = NeuronRequest(
            model=request.model,
            concepts=request.concepts,
            neutral=tuple(p.target_prompt for p in request.pairs() if p.target_prompt),
            kind=request.kind,
            prompts=request.prompts,
            layers=tuple(chosen),
            token=request.token,
        )
        variants["neurons"] = (chosen, edit(neurons, "neurons"))
    return variants


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _layers(layers: list[int]) -> str:
    if not layers:  # the context_embedder baseline edits no text-reading layer
        return "-"
    return layer_span(layers)


def summary_lines(rows: list[DemoRow]) -> list[str]:
    header = (
        f"{'case':<13} {'edit':<14} {'suite':<25} {'layers':<7} {'efficacy':>9} {'generalization':>15} "
        f"{'specificity':>12} {'identity':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        h = row.headline
        lines.append(
            f"{row.kind:<13} {row.variant:<14} {row.suite:<25} {_layers(row.layers):<7} "
            f"{_percent(h.efficacy):>9} {_percent(h.generalization):>15} {_percent(h.specificity):>12} "
            f"{_percent(h.identity):>9}"
        )
    return lines


def summary_table_html(rows: list[DemoRow]) -> str:
    body = "".join(
        f"<tr><td><a href='#{r.kind.replace(' ', '-')}'>{r.kind}</a></td><td><a href='{r.report}'>{r.variant}</a></td>"
        f"<td>{r.suite}</td><td>{_layers(r.layers)}</td><td>{_percent(r.headline.efficacy)}</td>"
        f"<td>{_percent(r.headline.generalization)}</td><td>{_percent(r.headline.specificity)}</td>"
        f"<td>{_percent(r.headline.identity)}</td></tr>"
        for r in rows
    )
    return (
        "<h1>locoedit demo: the toy world</h1><p>Efficacy: the edited concept no longer appears (probe). "
        "Generalization: the same on paraphrases. Specificity: neighbour and unrelated images that still show "
        "what their prompt asks, relative to the unedited model. Identity: those images with every attribute "
        "unchanged.</p><table class='layers'><tr><th>case</th><th>edit</th><th>suite</th><th>layers</th>"
        "<th>efficacy</th><th>generalization</th><th>specificity</th><th>identity</th></tr>"
        f"{body}</table>"
    )
