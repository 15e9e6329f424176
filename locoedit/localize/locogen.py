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
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from locoedit.core.dtypes import dtype_named
from locoedit.core.errors import LocoeditError
from locoedit.core.io import write_png, write_text
from locoedit.core.processes import Processes, current_processes
from locoedit.core.progress import ProgressCallback, ProgressTask
from locoedit.core.runfolder import RunFolder, check_writable
from locoedit.core.versions import versions
from locoedit.interventions.routing import Routing, TextRouting
from locoedit.localize.report import localization_report_html
from locoedit.localize.request import LocalizationRequest
from locoedit.localize.result import (
    RESULT_FILE,
    LocalizationResult,
    ReferenceImages,
    Screening,
    Sweep,
    WindowResult,
    window_key,
)
from locoedit.models import Adapter, GenerationSettings, load_adapter
from locoedit.scoring import ConceptScorer, Scorer, resolve_scorer

logger = logging.getLogger(__name__)


def _image_paths(group: str, request: LocalizationRequest) -> list[str]:
    return [f"images/{group}/p{p}_s{seed}.png" for p in range(len(request.prompts)) for seed in request.seeds]


def _mean_std(values: torch.Tensor) -> tuple[float, float]:
    std = values.std().item() if values.numel() > 1 else 0.0
    return values.mean().item(), std


class LocalizationFolder(RunFolder):
    """A LocoGen run: its request, reference images, and one progress file per finished window and stage."""

    def _progress(self, key: str, stage: str) -> Path:
        return self.path / "progress" / stage / f"{key}.json"

    def finished(self, key: str, stage: str = "") -> WindowResult | None:
        file = self._progress(key, stage)
        return WindowResult.read(file) if file.is_file() else None

    def record(self, result: WindowResult, stage: str = "") -> None:
        result.write(self._progress(result.key, stage))

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
Row = tuple[Group, int, int]  # (group, prompt index, seed): one image


@dataclass(frozen=True)
class Budget:
    """What a stage spends on each window: its generation settings and seeds. A screened run ranks every window on
    the ``screen`` stage, then confirms the best on the full budget (stage ``""``)."""

    settings: GenerationSettings
    seeds: tuple[int, ...]
    stage: str

    def rows(self, num_prompts: int) -> list[tuple[int, int]]:  # (prompt, seed), prompt-major
        return [(p, seed) for p in range(num_prompts) for seed in self.seeds]


class LocoGen:
    """Runs a :class:`LocalizationRequest` on an adapter, optionally persisting to (and resuming from) a folder.

    First the unrouted prompts (ORIGINAL) and targets (TARGET), one image per (prompt, seed), their rows shared by the
    processes; then the windows, each process taking its share of the windows not yet finished and generating
    ``chunk`` windows per denoising loop (exact mode: one). Every process records its windows in the run folder and
    reads the others' from there once all are done, so that each holds the whole sweep.
    """

    def __init__(
        self,
        request: LocalizationRequest,
        adapter: Adapter,
        scorer: Scorer,
        run: LocalizationFolder | None,
        progress: ProgressCallback | None = None,
        processes: Processes | None = None,
    ):
        self.request = request
        self.adapter = adapter
        self.scorer = scorer
        self.run = run
        self.progress = progress
        self.processes = processes or Processes(0, 1, None)
        settings = adapter.settings(request.steps, request.guidance, request.height, request.width)
        self.full = Budget(settings, request.seeds, "")
        screen = request.screen
        self.screening = (
            None
            if screen is None
            else Budget(replace(settings, num_inference_steps=screen.steps), request.seeds[: screen.seeds], "screen")
        )
        # Denoiser calls count one per image and step (a classifier-free-guidance pair is one call): the work done.
        self.timings = {"generation_s": 0.0, "scoring_s": 0.0, "denoiser_calls": 0}
        # Prompts and targets encoded together: row p is prompt p, row P + p its target.
        self.encoded = adapter.encode(list(request.prompts) + list(request.targets))

    def _generate(self, budget: Budget, rows: list[Row], task: ProgressTask) -> torch.Tensor:  # [rows, 3, H, W]
        num_prompts = len(self.request.prompts)
        prompt_rows = [p + num_prompts if group == TARGET else p for group, p, _ in rows]
        target_rows = [p + num_prompts for _, p, _ in rows]
        routes = tuple(group if isinstance(group, tuple) else () for group, _, _ in rows)
        interventions = []
        if any(routes):
            interventions.append(
                TextRouting(Routing(routes, self.request.route_added_text), self.encoded.conditional.take(target_rows))
            )
        start = time.perf_counter()
        images = self.adapter.generate(
            self.encoded.take(prompt_rows), [seed for _, _, seed in rows], budget.settings, interventions, task.advance
        )
        self.timings["generation_s"] += time.perf_counter() - start
        self.timings["denoiser_calls"] += len(rows) * budget.settings.num_inference_steps
        return images

    def _effects(self, reference: torch.Tensor, images: torch.Tensor) -> torch.Tensor:  # [rows]
        start = time.perf_counter()
        effect = self.scorer.effect(reference, images, self.request.concept)
        if self.request.adopt:  # the gain of the adopted text: its effect with the images' roles swapped
            effect = effect + self.scorer.effect(images, reference, self.request.adopt)
        self.timings["scoring_s"] += time.perf_counter() - start
        return effect

    def _references(self, budget: Budget, groups: tuple[str, ...]) -> dict[str, torch.Tensor]:  # [rows, 3, H, W] each
        name = f"{budget.stage}-reference" if budget.stage else "reference"
        stored = self.run.load_tensors(name) if self.run else None
        if stored is not None and set(groups) <= set(stored):
            return stored
        task = ProgressTask(
            self.progress,
            f"references{' (' + budget.stage + ')' if budget.stage else ''}",
            len(groups) * budget.settings.num_inference_steps,
        )
        generated = {}
        # One batch per group, the size of an exact-mode window's: batch size changes the kernels' summation order,
        # and a window that cannot act must score exactly 0, not the float noise of a differently sized batch.
        for group in groups:
            rows: list[Row] = [(group, p, seed) for p, seed in budget.rows(len(self.request.prompts))]
            mine = self.processes.share(rows)
            images = self._generate(budget, mine, task) if mine else torch.empty(0)
            generated[group] = torch.cat([share for share in self.processes.gather(images) if share.numel()])
        if self.run and self.processes.is_main:
            if not budget.stage:
                for group, group_images in generated.items():
                    self.run.write_images(group, group_images, self.request)
            # Kept as float tensors so that a resumed run scores against exactly the same images; saved after the
            # images, since a run that finds them stored does not write the images again.
            self.run.save_tensors(name, generated)
        return generated

    def _run_windows(
        self, budget: Budget, reference: torch.Tensor, windows: list[tuple[int, ...]], task_name: str
    ) -> list[WindowResult]:
        """Every window's result at ``budget``: recorded ones from the folder, this process's share of the rest
        generated and scored against ``reference``, the other processes' share read back once they are done."""
        stage = budget.stage
        results = {w: self.run.finished(window_key(w), stage) for w in windows} if self.run else {}
        pending = [w for w in windows if results.get(w) is None]
        self.processes.wait()  # every process has read the folder before any of them adds to it
        mine = self.processes.share(pending)
        per_loop = 1 if self.request.mode == "exact" else self.request.chunk
        loops = [mine[i : i + per_loop] for i in range(0, len(mine), per_loop)]
        rows = budget.rows(len(self.request.prompts))
        task = ProgressTask(self.progress, task_name, len(loops) * budget.settings.num_inference_steps)
        for loop in loops:
            generated = self._generate(budget, [(w, p, seed) for w in loop for p, seed in rows], task)
            for window, images in zip(loop, generated.split(len(rows))):
                effects = self._effects(reference, images)
                mean, std = _mean_std(effects)
                paths = (
                    self.run.write_images(window_key(window), images, self.request) if self.run and not stage else []
                )
                result = WindowResult(list(window), mean, std, effects.tolist(), paths)
                results[window] = result
                if self.run:
                    self.run.record(result, stage)
                logger.info("window %s%s: effect %.4f +- %.4f", list(window), f" ({stage})" if stage else "", mean, std)
        self.processes.wait()
        for window in pending:
            if window not in mine:
                assert self.run is not None  # only a shared run has windows of other processes, and it has a folder
                results[window] = self.run.finished(window_key(window), stage)
        return [typing.cast(WindowResult, results[w]) for w in windows]  # every process has recorded its windows

    def run_all(self) -> LocalizationResult:
        started = time.perf_counter()
        request, num_layers = self.request, len(self.adapter.layers)
        ranking = self.screening or self.full  # the budget every window gets
        references = self._references(ranking, (ORIGINAL, TARGET))
        sizes = [request.window] if isinstance(request.window, int) else range(1, num_layers + 1)  # int or "auto"
        ranked: list[tuple[int, list[WindowResult]]] = []
        for size in sizes:
            windows = self._run_windows(
                ranking,
                references[ORIGINAL],
                _windows(num_layers, size),
                f"windows of {size}{' (screening)' if self.screening else ''}",
            )
            ranked.append((size, windows))
            if not ranked[1:]:  # scored after the first windows, as an interrupted run counts scorings
                full_swap, _ = _mean_std(self._effects(references[ORIGINAL], references[TARGET]))
            best = max(w.effect for w in windows)
            if request.window != "auto" or best >= request.auto_threshold * full_swap:
                break
        if self.screening is None:
            sweeps = [Sweep(size, windows) for size, windows in ranked]
        else:
            screen = request.screen
            assert screen is not None  # self.screening is set exactly when the request screens
            screenings = [
                Screening(screen.steps, list(self.screening.seeds), screen.top_k, full_swap, windows)
                for _, windows in ranked
            ]
            original = self._references(self.full, (ORIGINAL,))[ORIGINAL]
            top = [tuple(w.layers) for w in screenings[-1].top()]
            confirmed = self._run_windows(self.full, original, top, f"top {len(top)} windows of {ranked[-1][0]}")
            sweeps = [Sweep(size, [], screening) for (size, _), screening in zip(ranked[:-1], screenings[:-1])]
            sweeps.append(Sweep(ranked[-1][0], confirmed, screenings[-1]))
        timings = self.processes.gather(dict(self.timings))
        totals = {key: sum(each[key] for each in timings) for key in self.timings}  # work of every process
        totals["total_s"] = time.perf_counter() - started
        totals["processes"] = self.processes.count
        images = ReferenceImages(
            _image_paths(ORIGINAL, request), [] if self.screening else _image_paths(TARGET, request)
        )
        return LocalizationResult.of(
            request,
            self.full.settings,
            [layer.info for layer in self.adapter.layers],
            full_swap,
            sweeps,
            images,
            versions(),
            totals,
        )


def checked(
    request: LocalizationRequest,
    adapter: Adapter,
    scorer: Scorer | None = None,
) -> tuple[LocalizationRequest, Scorer]:
    """The request with its scorer resolved (recorded in the result), and the scorer; refuses what this model cannot
    run (window, concept, prompt lengths, settings, screening budget) before any work is done."""
    num_layers = len(adapter.layers)
    if isinstance(request.window, int) and request.window > num_layers:  # an int or "auto"
        raise LocoeditError(
            f"window {request.window} is larger than the model's {num_layers} text-reading layers; "
            f"give --window between 1 and {num_layers}"
        )
    scorer = resolve_scorer(request.scorer, scorer, adapter)
    request = replace(request, scorer=scorer.spec)  # the result records the scorer used
    if isinstance(scorer, ConceptScorer):
        scorer.check_concept(request.concept)
        if request.adopt:
            scorer.check_concept(request.adopt)
    elif request.adopt:
        raise LocoeditError(
            f"the {scorer.spec} scorer cannot tell whether {request.adopt!r} appears; give --adopt with a concept "
            "scorer (toyworld or clip:ID_OR_FOLDER), or leave it out"
        )
    for prompt in request.prompts + request.targets:
        adapter.check_length(prompt)
    settings = adapter.settings(request.steps, request.guidance, request.height, request.width)
    if request.screen is not None and request.screen.steps >= settings.num_inference_steps:
        raise LocoeditError(
            f"screen steps {request.screen.steps} are not fewer than the sweep's "
            f"{settings.num_inference_steps}; screening must be cheaper than the sweep it screens"
        )
    return request, scorer


def localize(
    request: LocalizationRequest,
    out: str | Path | None = None,
    adapter: Adapter | None = None,
    scorer: Scorer | None = None,
    progress: ProgressCallback | None = None,
    processes: Processes | None = None,
) -> LocalizationResult:
    """Run LocoGen. With ``out``, write the run folder (JSON, images, report) and resume a run stopped part way.

    A request without a scorer gets the model's concept scorer (:func:`locoedit.scoring.scorer_spec_for`); the
    result's request records the one used. Under ``accelerate launch`` (default ``processes``: those the launcher
    started) the processes share the work through the run folder, each on its own device; the main process writes
    the result, and every process returns it.
    """
    processes = processes or current_processes()
    if processes.shared and out is None:
        raise LocoeditError(
            f"a run shared by {processes.count} processes needs an output folder (--out): the "
            "processes exchange their windows through it"
        )
    if out is not None:
        check_writable(out)
    if adapter is None:
        adapter = load_adapter(request.model, dtype_named(request.dtype), request.device or processes.device)
    request, scorer = checked(request, adapter, scorer)
    with _scheduler(adapter, request.scheduler):
        run = None
        if out is not None:
            run = LocalizationFolder(out)
            run.check_claim(request)  # every process refuses a folder of another run before any writes
            processes.wait()
            if processes.is_main:
                run.claim(request)
            processes.wait()
        result = LocoGen(request, adapter, scorer, run, progress, processes).run_all()
    if run is not None and processes.is_main:
        result.write(run.path / RESULT_FILE)
        write_text(run.path / "report.html", localization_report_html(result))
    processes.wait()
    return result
