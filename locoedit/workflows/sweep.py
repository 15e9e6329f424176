"""Many LocoGen jobs from one spec (``locoedit sweep SPEC.json --out DIR``), on one process or on every process
``accelerate launch`` started.

A spec lists jobs, each the fields of a :class:`LocalizationRequest` (in its JSON form) plus an optional ``name``
(its folder); ``defaults`` holds fields every job shares. Every job gets a run folder ``DIR/NAME``; ``DIR/sweep.json``
and ``DIR/index.html`` list them with their chosen windows and link each report. The jobs run one after another, each
shared by all the processes (its references by row, its windows by process: see :mod:`locoedit.localize.locogen`), so
the work stays balanced whatever the jobs' sizes; a process loads each model once, before the first job. Everything a spec can get wrong
(unknown keys, no jobs, bad fields, missing models, a folder holding another sweep) is refused before any process
generates or writes anything. Rerunning the same command resumes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field, replace
from html import escape
from pathlib import Path

from locoedit.core.dtypes import dtype_named
from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord, check_format, from_plain
from locoedit.core.io import write_text
from locoedit.core.processes import Processes, current_processes
from locoedit.core.progress import ProgressCallback
from locoedit.core.runfolder import RunFolder, check_writable
from locoedit.localize import LocalizationRequest, LocalizationResult, Screen, localize
from locoedit.localize.locogen import checked
from locoedit.models import Adapter, check_model, load_adapter
from locoedit.report.html import number, page
from locoedit.scoring import Scorer, make_scorer, scorer_spec_for

SPEC_FILE, INDEX_FILE, INDEX_PAGE = "sweep-spec.json", "sweep.json", "index.html"
JOB_FIELDS = ("name",) + tuple(f.name for f in dataclasses.fields(LocalizationRequest))
SPEC_KEYS = ("format", "defaults", "jobs")


@dataclass(frozen=True)
class SweepJob:
    name: str  # its run folder under the sweep's
    request: LocalizationRequest


@dataclass(frozen=True)
class SweepSpec(JsonRecord):
    """The jobs of a sweep, as resolved from the spec file (recorded in the sweep folder as ``sweep-spec.json``)."""

    FORMAT = "locoedit.sweep-spec/1"

    jobs: tuple[SweepJob, ...]

    @classmethod
    def load(cls, path: str | Path, screen: Screen | None = None) -> SweepSpec:
        """The spec in ``path``; ``screen`` screens every job that sets no ``screen`` of its own."""
        path = Path(path)
        if not path.is_file():
            raise LocoeditError(f"sweep spec {path} does not exist; give a JSON file with a list of jobs")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LocoeditError(f"sweep spec {path} is not valid JSON ({error})") from None
        return cls.parse(data, str(path), screen)

    @classmethod
    def parse(cls, data, source: str, screen: Screen | None = None) -> SweepSpec:
        check_format(data, cls.FORMAT, source)
        _check_keys(data, SPEC_KEYS, source)
        jobs, defaults = data.get("jobs"), data.get("defaults", {})
        if not isinstance(jobs, list) or not jobs:
            raise LocoeditError(
                f'{source} lists no jobs; give "jobs": [{{"model": ..., "prompts": [...], "targets": [...]}}, ...]'
            )
        _check_keys(defaults, JOB_FIELDS, f"{source}: defaults")
        parsed = []
        for number_, job in enumerate(jobs, 1):
            where = f"{source}: job {number_}"
            _check_keys(job, JOB_FIELDS, where)
            fields = {**defaults, **job}
            name = fields.pop("name", None)
            try:
                request = from_plain(LocalizationRequest, fields, "job")
            except LocoeditError as error:
                raise LocoeditError(f"{where}: {error}") from None
            if request.screen is None and screen is not None:
                request = replace(request, screen=screen)
            parsed.append(SweepJob(_job_name(name, request, number_, where), request))
        names = [job.name for job in parsed]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise LocoeditError(f"{source}: job names {repeated} repeat; every job needs its own folder name")
        return cls(tuple(parsed))


def _check_keys(data, allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(data, dict):
        raise LocoeditError(f"{where} should be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise LocoeditError(f"{where} has unknown keys {unknown}; allowed: {', '.join(allowed)}")


def _job_name(name, request: LocalizationRequest, number_: int, where: str) -> str:
    if name is None:
        return f"{number_:02d}-" + (re.sub(r"[^a-z0-9]+", "-", request.concept.lower()).strip("-")[:40] or "job")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise LocoeditError(f"{where}: name {name!r} is not a plain folder name (letters, digits, '_', '.', '-')")
    return name


@dataclass(frozen=True)
class SweepRow:
    name: str
    model: str
    concept: str
    window_size: int
    chosen: list[int]
    effect: float
    full_swap_effect: float
    screen: str | None  # STEPS:SEEDS:TOPK, or None for a full sweep
    denoiser_calls: int  # spent by this run of the sweep (a resumed job counts only what was left)
    report: str  # relative to the sweep folder


@dataclass(frozen=True)
class SweepIndex(JsonRecord):
    """``sweep.json``: every job's chosen window, with the path of its report."""

    FORMAT = "locoedit.sweep/1"

    jobs: list[SweepRow]
    processes: int
    timings: dict[str, float] = field(default_factory=dict)


def _row(job: SweepJob, result: LocalizationResult) -> SweepRow:
    return SweepRow(
        job.name,
        result.model,
        result.concept,
        result.window_size,
        list(result.chosen.layers),
        result.chosen.effect,
        result.full_swap_effect,
        None if job.request.screen is None else str(job.request.screen),
        int(result.timings.get("denoiser_calls", 0)),
        f"{job.name}/report.html",
    )


def sweep_index_html(index: SweepIndex) -> str:
    rows = "".join(
        f"<tr><td><a href='{escape(row.report)}'>{escape(row.name)}</a></td><td><code>{escape(row.model)}</code></td>"
        f"<td>{escape(row.concept)}</td><td>{row.window_size}</td><td>{row.chosen}</td><td>{number(row.effect)}</td>"
        f"<td>{number(row.full_swap_effect)}</td><td>{escape(row.screen or 'off')}</td><td>{row.denoiser_calls}</td></tr>"
        for row in index.jobs
    )
    return page(
        "LocoGen sweep",
        (
            f"<h2>LocoGen sweep: {len(index.jobs)} jobs on {index.processes} process(es)</h2>"
            "<table><tr><th>job (report)</th><th>model</th><th>concept</th><th>window size</th><th>chosen layers</th>"
            "<th>effect</th><th>all layers</th><th>screen</th><th>denoiser calls</th></tr>" + rows + "</table>"
        ),
    )


def run_sweep(
    spec: SweepSpec, out: str | Path, progress: ProgressCallback | None = None, processes: Processes | None = None
) -> SweepIndex:
    """Run every job of ``spec`` into ``out/NAME``, then write ``out/sweep.json`` and ``out/index.html``.

    Every model of the spec is loaded first (once per process, dtype and device) and every job checked against it,
    so that a job that cannot run is refused before any job generates or anything is written."""
    started = time.perf_counter()
    processes = processes or current_processes()
    out = check_writable(out)
    for job in spec.jobs:
        try:
            check_model(job.request.model)
        except LocoeditError as error:
            raise LocoeditError(f"job {job.name!r}: {error}") from None
    adapters: dict[tuple, Adapter] = {}
    scorers: dict[str, Scorer] = {}
    prepared = []
    for job in spec.jobs:
        request = job.request
        device = request.device or processes.device
        key = (request.model, request.dtype, device)
        if key not in adapters:
            adapters[key] = load_adapter(request.model, dtype_named(request.dtype), device)
        adapter = adapters[key]
        scorer_spec = request.scorer or scorer_spec_for(adapter)
        if scorer_spec not in scorers:
            scorers[scorer_spec] = make_scorer(scorer_spec, adapter.device)
        try:
            checked(request, adapter, scorers[scorer_spec])
        except LocoeditError as error:
            raise LocoeditError(f"job {job.name!r}: {error}") from None
        prepared.append((job, adapter, scorers[scorer_spec]))
    folder = RunFolder(out, SPEC_FILE)
    folder.check_claim(spec)
    processes.wait()
    if processes.is_main:
        folder.claim(spec)
    processes.wait()
    rows = [
        _row(job, localize(job.request, out / job.name, adapter, scorer, progress, processes))
        for job, adapter, scorer in prepared
    ]
    index = SweepIndex(rows, processes.count, {"total_s": time.perf_counter() - started})
    if processes.is_main:
        index.write(out / INDEX_FILE)
        write_text(out / INDEX_PAGE, sweep_index_html(index))
    processes.wait()
    return index
