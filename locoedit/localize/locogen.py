"""LocoGen: find the window of cross-attention layers that controls a concept.

For each window of ``m`` consecutive cross-attention layers (in execution order), generate with the target
prompt (concept removed) fed to the window and the original prompt fed to every other layer; the window whose
swap removes most of the concept (highest scorer ``effect``) is where the concept is controlled.

Windows are every run of ``m`` consecutive layers: ``[i, i + m)`` for ``i = 0 .. L - m``, so there are
``L - m + 1`` of them and every one has exactly ``m`` layers. (The paper's script instead let the last windows
shrink to the layers that remain; we never shrink a window.)

``exact`` mode runs one denoising loop per window, as the paper does. ``batched`` mode runs ``chunk`` windows in
one loop, one batch row per (window, prompt, seed); both start every row from noise seeded by its seed alone,
so they give the same images up to float round-off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from locoedit.core.dtypes import dtype_named
from locoedit.core.errors import LocoeditError
from locoedit.core.io import write_png, write_text
from locoedit.core.runfolder import RunFolder, check_writable
from locoedit.core.progress import ProgressCallback, ProgressTask
from locoedit.core.versions import versions
from locoedit.interventions.routing import Routing, TextRouting
from locoedit.localize.report import localization_report_html
from locoedit.localize.request import LocalizationRequest
from locoedit.localize.result import (
    RESULT_FILE,
    LocalizationResult,
    ReferenceImages,
    Sweep,
    WindowResult,
    window_key,
)
from locoedit.models import Adapter, load_adapter
from locoedit.scoring import ConceptScorer, Scorer, resolve_scorer

logger = logging.getLogger(__name__)

def _image_paths(group: str, request: LocalizationRequest) -> list[str]:
    return [f"images/{group}/p{p}_s{seed}.png" for p in range(len(request.prompts)) for seed in request.seeds]


def _mean_std(values: torch.Tensor) -> tuple[float, float]:
    std = values.std().item() if values.numel() > 1 else 0.0
    return values.mean().item(), std


class LocalizationFolder(RunFolder):
    """A LocoGen run: its request, reference images, and one progress file per finished window."""

    def finished(self, key: str) -> WindowResult | None:
        file = self.path / "progress" / f"{key}.json"
        return WindowResult.read(file) if file.is_file() else None

    def record(self, result: WindowResult) -> None:
        result.write(self.path / "progress" / f"{result.key}.json")

    def write_images(self, group: str, images: torch.Tensor, request: LocalizationRequest) -> list[str]:
        paths = _image_paths(group, request)
        for relative, image in zip(paths, images):
            write_png(self.path / relative, image)
        return paths


def _windows(num_layers: int, size: int) -> list[tuple[int, ...]]:
    return [tuple(range(start, start + size)) for start in range(num_layers - size + 1)]


@contextmanager
def _scheduler(adapter: Adapter, name: str | None) -> Iterator[None]:
    """Use the diffusers scheduler class ``name`` (None: the pipeline's own) for the span of the context."""
    if name is None:
        yield
        return
    import diffusers

    scheduler_class = getattr(diffusers, name, None)
    if scheduler_class is None or not name.endswith("Scheduler"):
        raise LocoeditError(f"scheduler {name!r} is not a diffusers scheduler class; e.g. DDIMScheduler")
    previous = adapter.pipe.scheduler
    adapter.pipe.scheduler = scheduler_class.from_config(previous.config)
    try:
        yield
    finally:
        adapter.pipe.scheduler = previous


ORIGINAL, TARGET = "original", "target"  # the two unrouted image groups every sweep is measured against
Group = str | tuple[int, ...]  # ORIGINAL, TARGET, or a window's layer indices


class LocoGen:
    """Runs a :class:`LocalizationRequest` on an adapter, optionally persisting to (and resuming from) a folder.

    Every denoising loop generates a list of *groups*, each one row per (prompt, seed): the unrouted
    prompts (ORIGINAL), the unrouted targets (TARGET), or the prompts with a window routed to the targets.
    Exact mode runs the two reference groups in one loop, then one loop per window; batched mode runs
    ``chunk`` windows per loop, the reference groups joining the first.
    """

    def __init__(self, request: LocalizationRequest, adapter: Adapter, scorer: Scorer, run: LocalizationFolder | None,
                 progress: ProgressCallback | None = None):
        self.request = request
        self.adapter = adapter
        self.scorer = scorer
        self.run = run
        self.progress = progress
        self.settings = adapter.settings(request.steps, request.guidance, request.height, request.width)
        # One row per (prompt, seed), prompt-major: the unit that every window is generated and scored on.
        self.rows = [(p, seed) for p in range(len(request.prompts)) for seed in request.seeds]
        self.timings = {"generation_s": 0.0, "scoring_s": 0.0}
        # Prompts and targets encoded together: row p is prompt p, row P + p its target.
        self.encoded = adapter.encode(list(request.prompts) + list(request.targets))
        self.reference: torch.Tensor | None = None  # [rows, 3, H, W] the unrouted prompts' images
        self.target_images: torch.Tensor | None = None  # [rows, 3, H, W] the unrouted targets' images

    def _generate(self, groups: list[Group], task: ProgressTask) -> list[torch.Tensor]:  # per group [rows, 3, H, W]
        num_prompts = len(self.request.prompts)
        prompt_rows, target_rows, seeds, routes = [], [], [], []
        for group in groups:
            for p, seed in self.rows:
                prompt_rows.append(p + num_prompts if group == TARGET else p)
                target_rows.append(p + num_prompts)
                seeds.append(seed)
                routes.append(group if isinstance(group, tuple) else ())
        interventions = []
        if any(routes):
            routing = Routing(tuple(routes), self.request.route_added_text)
            interventions.append(TextRouting(routing, self.encoded.conditional.take(target_rows)))
        start = time.perf_counter()
        images = self.adapter.generate(self.encoded.take(prompt_rows), seeds, self.settings, interventions, task.advance)
        self.timings["generation_s"] += time.perf_counter() - start
        return list(images.split(len(self.rows)))

    def _effects(self, images: torch.Tensor) -> torch.Tensor:  # [rows]
        start = time.perf_counter()
        effect = self.scorer.effect(self.reference, images, self.request.concept)
        self.timings["scoring_s"] += time.perf_counter() - start
        return effect

    def _store_references(self, original: torch.Tensor, target: torch.Tensor) -> None:
        self.reference, self.target_images = original, target
        if self.run:
            self.run.write_images(ORIGINAL, original, self.request)
            self.run.write_images(TARGET, target, self.request)
            # Kept as float tensors so that a resumed run scores against exactly the same images.
            self.run.save_tensors("reference", {ORIGINAL: original, TARGET: target})

    def _sweep(self, size: int) -> Sweep:
        windows = _windows(len(self.adapter.layers), size)
        results = {w: self.run.finished(window_key(w)) for w in windows} if self.run else {}
        pending = [w for w in windows if results.get(w) is None]
        per_loop = 1 if self.request.mode == "exact" else self.request.chunk
        loops: list[list[Group]] = [pending[i : i + per_loop] for i in range(0, len(pending), per_loop)]
        if self.reference is None:
            if self.request.mode == "exact" or not loops:
                loops.insert(0, [])
            loops[0] = [ORIGINAL, TARGET] + loops[0]
        task = ProgressTask(self.progress, f"windows of {size}", len(loops) * self.settings.num_inference_steps)
        for loop in loops:
            generated = dict(zip(loop, self._generate(loop, task)))
            if ORIGINAL in generated:
                self._store_references(generated.pop(ORIGINAL), generated.pop(TARGET))
            for window, images in generated.items():
                effects = self._effects(images)
                mean, std = _mean_std(effects)
                key = window_key(window)
                paths = self.run.write_images(key, images, self.request) if self.run else []
                results[window] = WindowResult(list(window), mean, std, effects.tolist(), paths)
                if self.run:
                    self.run.record(results[window])
                logger.info("window %s: effect %.4f +- %.4f", list(window), mean, std)
        return Sweep(size, [results[w] for w in windows])

    def run_all(self) -> LocalizationResult:
        started = time.perf_counter()
        request, num_layers = self.request, len(self.adapter.layers)
        stored = self.run.load_tensors("reference") if self.run else None
        if stored is not None:
            self.reference, self.target_images = stored[ORIGINAL], stored[TARGET]
        sizes = [request.window] if request.window != "auto" else range(1, num_layers + 1)
        sweeps, full_swap = [], None
        for size in sizes:
            sweeps.append(self._sweep(size))
            if full_swap is None:
                full_swap, _ = _mean_std(self._effects(self.target_images))
            if request.window != "auto" or sweeps[-1].best().effect >= request.auto_threshold * full_swap:
                break
        self.timings["total_s"] = time.perf_counter() - started
        images = ReferenceImages(_image_paths(ORIGINAL, request), _image_paths(TARGET, request))
        return LocalizationResult.of(request, self.settings, [layer.info for layer in self.adapter.layers], full_swap,
                                     sweeps, images, versions(), dict(self.timings))


def localize(
    request: LocalizationRequest,
    out: str | Path | None = None,
    adapter: Adapter | None = None,
    scorer: Scorer | None = None,
    progress: ProgressCallback | None = None,
) -> LocalizationResult:
    """Run LocoGen. With ``out``, write the run folder (JSON, images, report) and resume a run stopped part way.

    A request without a scorer gets the model's concept scorer (:func:`locoedit.scoring.scorer_spec_for`); the
    result's request records the one used.
    """
    if out is not None:
        check_writable(out)
    if adapter is None:
        adapter = load_adapter(request.model, dtype_named(request.dtype), request.device)
    num_layers = len(adapter.layers)
    if request.window != "auto" and request.window > num_layers:
        raise LocoeditError(
            f"window {request.window} is larger than the model's {num_layers} cross-attention layers; "
            f"give --window between 1 and {num_layers}"
        )
    scorer = resolve_scorer(request.scorer, scorer, adapter)
    request = replace(request, scorer=scorer.spec)  # the result records the scorer used
    if isinstance(scorer, ConceptScorer):
        scorer.check_concept(request.concept)
    for prompt in request.prompts + request.targets:
        adapter.check_length(prompt)
    adapter.settings(request.steps, request.guidance, request.height, request.width)  # refuses what the model can't do
    with _scheduler(adapter, request.scheduler):
        run = None
        if out is not None:
            run = LocalizationFolder(out)
            run.claim(request)
        result = LocoGen(request, adapter, scorer, run, progress).run_all()
    if run is not None:
        result.write(run.path / RESULT_FILE)
        write_text(run.path / "report.html", localization_report_html(result))
    return result
