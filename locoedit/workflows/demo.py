"""``locoedit demo``: the whole story on the shipped toy world, with no downloads.

For one style, one object and one fact (``locoedit/data/demo.json``): LocoGen localizes the concept, LocoEdit
edits the chosen layers, and the edit is evaluated against the probe's ground truth, side by side with the same
edit of every layer and of a random window of the same size (the paper's controls), plus one neuron-level edit.
Writes one HTML report, ``demo.json``, and prints a summary table.
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
from locoedit.core.runfolder import check_writable
from locoedit.edit import EditRequest, compute_edit
from locoedit.edit.neurons import NeuronRequest, compute_neuron_edit
from locoedit.evaluate import EvaluationSuite, Headline, evaluate
from locoedit.evaluate.report import evaluation_section
from locoedit.interventions.delta import EditDelta
from locoedit.localize import LocalizationRequest, localize
from locoedit.localize.report import localization_section
from locoedit.models import Adapter, load_adapter
from locoedit.report.html import page
from locoedit.scoring import make_scorer, scorer_spec_for

logger = logging.getLogger(__name__)

DEMO_FILE = Path(__file__).parents[1] / "data" / "demo.json"


@dataclass(frozen=True)
class DemoRow:
    kind: str
    variant: str
    layers: list[int]
    headline: Headline
    report: str  # path of the evaluation's own report, relative to the demo folder


@dataclass(frozen=True)
class DemoRecord(JsonRecord):
    """``demo.json``: one row per (case, edit variant)."""

    FORMAT = "locoedit.demo/1"

    model: str
    rows: list[DemoRow]
    minutes: float
    seeds: dict[str, int] = field(default_factory=dict)  # per stage: localize, evaluation


def _random_window(num_layers: int, size: int, avoid: list[int], seed: int) -> list[int]:
    starts = [s for s in range(num_layers - size + 1) if s != avoid[0]]
    start = random.Random(seed).choice(starts)
    return list(range(start, start + size))


def run_demo(out: str | Path = "runs/demo", adapter: Adapter | None = None, seeds: int | None = None,
             progress: ProgressCallback | None = None) -> list[DemoRow]:
    """Run the demo into ``out``. ``seeds`` (per prompt) overrides the plan's, for smoke runs; the README's figures
    use the plan's."""
    out = check_writable(out)
    if out.exists() and any(out.iterdir()) and not (out / "demo.json").exists():
        raise LocoeditError(f"output folder {out} is not empty and holds no demo; choose an empty or new --out")
    plan = json.loads(DEMO_FILE.read_text())
    started = time.perf_counter()
    model = plan["model"]
    adapter = adapter or load_adapter(model, device="cpu")
    scorer = make_scorer(scorer_spec_for(adapter))
    if seeds is not None and seeds < 1:
        raise LocoeditError(f"seeds {seeds} must be >= 1")
    localize_seeds = tuple(range(seeds or plan["localize_seeds"]))
    evaluation_seeds = tuple(range(seeds or plan["evaluation_seeds"]))
    window = plan["window"]
    rows: list[DemoRow] = []
    sections = []
    for case in plan["cases"]:
        kind = case["kind"]
        case_dir = out / kind
        localization = localize(
            LocalizationRequest(
                model=model, prompts=tuple(case["localize"]["prompts"]), targets=tuple(case["localize"]["targets"]),
                concept=case["concept"], scorer=scorer.spec, window=window, seeds=localize_seeds, mode="batched",
                chunk=8,
            ),
            out=case_dir / "localize", adapter=adapter, scorer=scorer, progress=progress,
        )
        chosen = localization.chosen.layers
        num_layers = len(adapter.layers)
        edit = case["edit"]
        request = EditRequest(
            model=model, concepts=tuple(edit["concepts"]), targets=tuple(edit["targets"]), kind=kind,
            prompts=tuple(edit["prompts"]), preserve=tuple(edit["preserve"]), token=edit["token"], layers=tuple(chosen),
        )
        variants: dict[str, tuple[list[int], EditDelta]] = {
            "localized": (chosen, compute_edit(adapter, request)),
            "all layers": (list(range(num_layers)),
                           compute_edit(adapter, replace(request, layers=tuple(range(num_layers))))),
        }
        random_window = _random_window(num_layers, len(chosen), chosen, seed=len(rows))
        variants["random window"] = (random_window, compute_edit(adapter, replace(request, layers=tuple(random_window))))
        if case["neurons"]:
            # The neutral prompts are LocoGen's targets: the same scenes without the concept.
            neurons = NeuronRequest(model=model, concepts=tuple(edit["concepts"]),
                                    neutral=tuple(case["localize"]["targets"]), kind=kind,
                                    prompts=tuple(edit["prompts"]), layers=tuple(chosen), token=edit["token"])
            variants["neurons"] = (chosen, compute_neuron_edit(adapter, neurons))
        suite = replace(EvaluationSuite.load(case["suite"]), seeds=evaluation_seeds)
        case_sections = [localization_section(localization, image_root=f"{kind}/localize/")]
        unedited = None  # every variant is compared with the same unedited images
        for variant, (layers, delta) in variants.items():
            name = variant.replace(" ", "-")
            delta.save(case_dir / f"{name}.safetensors")
            result = evaluate(adapter, delta, suite, scorer, out=case_dir / name, progress=progress, reuse=unedited,
                              localization=case_dir / "localize")
            unedited = unedited or result
            rows.append(DemoRow(kind, variant, layers, result.headline, f"{kind}/{name}/report.html"))
            if variant == "localized":
                case_sections.append(evaluation_section(result, image_root=f"{kind}/{name}/",
                                                        data_link=f"{kind}/{name}/evaluation.json"))
        sections.append(f"<section id='{kind}'><h1>{kind}: {case['concept']}</h1>{''.join(case_sections)}</section>")
    summary = DemoRecord(model, rows, (time.perf_counter() - started) / 60,
                         {"localize": len(localize_seeds), "evaluation": len(evaluation_seeds)})
    summary.write(out / "demo.json")
    write_text(out / "report.html", page("locoedit demo", summary_table_html(rows) + "".join(sections)))
    return rows


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def summary_lines(rows: list[DemoRow]) -> list[str]:
    header = f"{'kind':<7} {'edit':<14} {'layers':<12} {'efficacy':>9} {'generalization':>15} {'specificity':>12}"
    lines = [header, "-" * len(header)]
    for row in rows:
        layers = f"{row.layers[0]}-{row.layers[-1]}" if len(row.layers) > 1 else str(row.layers[0])
        h = row.headline
        lines.append(f"{row.kind:<7} {row.variant:<14} {layers:<12} {_percent(h.efficacy):>9} "
                     f"{_percent(h.generalization):>15} {_percent(h.specificity):>12}")
    return lines


def summary_table_html(rows: list[DemoRow]) -> str:
    body = "".join(
        f"<tr><td><a href='#{r.kind}'>{r.kind}</a></td><td><a href='{r.report}'>{r.variant}</a></td>"
        f"<td>{r.layers[0]}-{r.layers[-1]}</td><td>{_percent(r.headline.efficacy)}</td>"
        f"<td>{_percent(r.headline.generalization)}</td><td>{_percent(r.headline.specificity)}</td></tr>"
        for r in rows
    )
    return ("<h1>locoedit demo: the toy world</h1><p>Efficacy: the edited concept no longer appears (probe). "
            "Generalization: the same on paraphrases. Specificity: every attribute of neighbour and unrelated "
            "images unchanged.</p><table class='layers'><tr><th>kind</th><th>edit</th><th>layers</th>"
            f"<th>efficacy</th><th>generalization</th><th>specificity</th></tr>{body}</table>")
