"""The ``locoedit`` command line: a thin layer over the library.

Commands that run a request (localize, trace, generate, edit, neurons, tune, evaluate) are built from the request's
declared settings (:mod:`locoedit.cli.options`); this module imports neither torch nor diffusers, which load when a
command starts work.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, cast

import typer

from locoedit.cli.errors import user_errors
from locoedit.cli.options import option, request_command
from locoedit.cli.progress import terminal_progress
from locoedit.core.errors import LocoeditError
from locoedit.core.processes import is_main_process
from locoedit.delta.request import ApplyRequest, ExportRequest
from locoedit.edit.methods import EDIT_METHODS
from locoedit.evaluate.request import EvaluationRequest
from locoedit.localize.request import LocalizationRequest, Screen
from locoedit.trace.request import TraceRequest
from locoedit.workflows.requests import GenerationRequest, TuneRequest

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n")[0])


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Draw progress bars (default: when stderr is a terminal)."),
    ] = None,
):
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:  # advice meant for the libraries' own users (e.g. "install torchvision"), not for ours; both
        # libraries read these when they are first imported, which is after this
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # their download bars; ours follow --progress
    # The progress callback every command hands the library; under a launcher, the main process draws.
    ctx.obj = terminal_progress(progress) if is_main_process() else None


Model = Annotated[str, typer.Argument(help="A hub id, a local diffusers pipeline folder, or 'toyworld'.")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ... (default: cuda if available).")]
Out = Annotated[Path, typer.Option(help="Folder to write (JSON, images, report.html). Rerun to resume.")]


@app.command()
@user_errors
def layers(
    model: Model,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """List the cross-attention layers (joint-attention blocks: dual or single stream) in execution order."""
    from locoedit.core.formats import to_plain
    from locoedit.models import load_adapter

    adapter = load_adapter(model, device="cpu")
    rows = [to_plain(layer.info) for layer in adapter.layers]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'index':>5}  {'block':<11} {'stream':<7} {'res':>4}  {'edits':<22} module")
    for row in rows:
        typer.echo(
            f"{row['index']:>5}  {row['block']:<11} {row['stream']:<7} {row['resolution']:>4}  "
            f"{'/'.join(row['edit_projections']):<22} {row['name']}"
        )


def _localize(ctx: typer.Context, request: LocalizationRequest, out: Path) -> None:
    from locoedit.localize import localize as run_localize

    result = run_localize(request, out=out, progress=ctx.obj)
    if not is_main_process():
        return
    typer.echo(f"concept {request.concept!r}: window size {result.window_size}")
    for window_result in result.windows:
        mark = "  <- chosen" if window_result.layers == result.chosen.layers else ""
        typer.echo(
            f"  layers {window_result.layers}: effect {window_result.effect:+.4f} "
            f"+- {window_result.effect_std:.4f}{mark}"
        )
    typer.echo(f"all layers: effect {result.full_swap_effect:+.4f}")
    typer.echo(f"wrote {out / 'localization.json'} and {out / 'report.html'}")


request_command(
    app,
    "localize",
    LocalizationRequest,
    _localize,
    "LocoGen: find the window of cross-attention layers that controls a concept (`accelerate launch` shares it).",
    (option("out", Out),),
)


@app.command()
@user_errors
def sweep(
    ctx: typer.Context,
    spec: Annotated[
        Path,
        typer.Argument(
            help='JSON: {"jobs": [{"model", "prompts", "targets", ...}], "defaults": {...}}; a job\'s keys are localize\'s request fields, plus an optional folder name.'
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="Folder: one run folder per job, sweep.json and index.html. Rerun to resume.")
    ],
    screen: Annotated[
        str | None, typer.Option(help="STEPS:SEEDS:TOPK: screen the jobs that set no screen (default: off).")
    ] = None,
):
    """Many LocoGen jobs from one spec (`accelerate launch` shares every job among its processes)."""
    from locoedit.workflows.sweep import SweepSpec, run_sweep

    index = run_sweep(SweepSpec.load(spec, Screen.parse(screen) if screen else None), out, progress=ctx.obj)
    if not is_main_process():
        return
    for row in index.jobs:
        typer.echo(
            f"{row.name}: {row.concept!r} -> layers {row.chosen} (effect {row.effect:+.4f}, all layers "
            f"{row.full_swap_effect:+.4f})"
        )
    typer.echo(f"wrote {out / 'sweep.json'} and {out / 'index.html'}")


def _trace(ctx: typer.Context, request: TraceRequest, out: Path) -> None:
    from locoedit.trace import trace as run_trace

    result = run_trace(request, out=out, progress=ctx.obj)
    typer.echo(
        f"concept {result.concept!r}: clean score {result.clean_score:.4g}, corrupted {result.corrupted_score:.4g}"
    )
    if result.note:
        typer.echo(result.note)
    for name in ("denoiser", "text_encoder"):
        measured = (s for s in result.sites if s.part == name and s.effect is not None)
        ranked = sorted(measured, key=lambda s: -cast(float, s.effect))  # measured: effect is not None
        for site_effect in ranked[:5]:
            typer.echo(f"  {name:<12} {site_effect.effect:+.3f} +- {site_effect.effect_std:.3f}  {site_effect.name}")
    typer.echo(f"wrote {out / 'trace.json'} and {out / 'report.html'}")


request_command(
    app,
    "trace",
    TraceRequest,
    _trace,
    "Causal tracing: corrupt the concept's text, restore one site's clean state at a time, see what comes back.",
    (option("out", Annotated[Path, typer.Option(help="New folder: trace.json, images, report.html.")]),),
)


@app.command()
@user_errors
def sites(model: Model):
    """List the sites causal tracing restores, per part, in execution order."""
    from locoedit.models import load_adapter
    from locoedit.trace import denoiser_sites, text_encoder_sites

    adapter = load_adapter(model, device="cpu")
    for site_ in denoiser_sites(adapter) + text_encoder_sites(adapter):
        typer.echo(f"{site_.part:<12} {site_.index:>4}  {site_.kind:<18} {site_.name}")


def _generate(ctx: typer.Context, request: GenerationRequest, out: Path) -> None:
    from locoedit.workflows.generate import generate_to_folder

    record = generate_to_folder(request, out, progress=ctx.obj)
    typer.echo(f"wrote {len(record.images)} images and {out / 'generation.json'}")


request_command(
    app,
    "generate",
    GenerationRequest,
    _generate,
    "Generate images for prompts and seeds with any supported model.",
    (option("out", Annotated[Path, typer.Option(help="Folder for the PNGs and generation.json.")], Path("generated")),),
)


OutDelta = Annotated[Path, typer.Option("--out", help="Delta file to write (.safetensors).")]


def _edit(ctx: typer.Context, request, out: Path) -> None:
    from locoedit.edit import edit_to_file

    delta = edit_to_file(request, out, progress=ctx.obj)
    names = ", ".join(str(layer["index"]) for layer in delta.layers)
    if delta.method == "neurons":
        count = sum(len(item["neurons"]) for item in delta.settings["chosen_neurons"])
        typer.echo(f"replaced {count} neurons in layers {names} -> {out}")
    else:
        edited = f"layers {names}" if delta.layers else ", ".join(delta.parameters)  # uce-context: no layers
        typer.echo(
            f"edited {edited} ({len(delta.parameters)} matrices, {delta.settings['concept_rows']} concept rows) "
            f"-> {out}"
        )
        if len(delta.settings.get("auto_layers") or []) > 1:
            typer.echo(f"auto layers: {_widening(delta.settings['auto_layers'])}")
        entangled = delta.settings.get("entangled") or []
        if entangled:
            shown = ", ".join(f"{e['prompt']!r} ({e['entanglement']:.2f})" for e in entangled)
            kept = "preserved" if delta.settings.get("preserve_nearest_weight", 1) > 0 else "found (not preserved)"
            typer.echo(f"{kept} {len(entangled)} entangled prompts: {shown}")


def _widening(tries: list[dict]) -> str:
    """The widening tries of ``--layers auto`` in one line: each window, with the smallest share of the routing's
    effect the edit on it reached, or why a wider one was refused."""
    from locoedit.edit.request import layer_span

    steps = []
    for attempt in tries:
        if attempt.get("refused"):
            narrow, wide = attempt["leak"]
            steps.append(f"{layer_span(attempt['layers'])} refused (look-alike leak {narrow:.2f} -> {wide:.2f})")
        elif attempt["effect_share"]:
            steps.append(f"{layer_span(attempt['layers'])} (effect share {min(attempt['effect_share']):.2f})")
        else:
            steps.append(layer_span(attempt["layers"]))
    return " -> ".join(steps)


for _method in EDIT_METHODS.values():
    request_command(app, _method.command, _method.request, _edit, _method.summary, (option("out", OutDelta),))


def _tune(ctx: typer.Context, request: TuneRequest, out: Path) -> None:
    from locoedit.workflows.tune import tune as run_tune

    result = run_tune(request, out, progress=ctx.obj)
    chosen, test = result.variants[result.chosen], result.test
    show = lambda v: "n/a" if v is None else f"{100 * v:.0f}%"
    typer.echo(
        f"chose variant {chosen.index} of {len(result.variants)} on validation: layers {chosen.layers}, "
        f"{chosen.token} rows, neighbours {chosen.preserve_neighbours:g}, general {chosen.preserve_general:g}, "
        f"lambda {chosen.lam:g}"
    )
    typer.echo(
        f"test split: efficacy {show(test.efficacy)}  generalization {show(test.generalization)}  "
        f"specificity {show(test.specificity)}  identity {show(test.identity)}"
    )
    typer.echo(f"wrote {out / 'edit.safetensors'}, {out / 'tune.json'} and {out / 'report.html'}")


request_command(
    app,
    "tune",
    TuneRequest,
    _tune,
    "Choose an edit's settings on a suite's validation split; write the chosen delta and its test-split figures.",
    (
        option(
            "out", Annotated[Path, typer.Option(help="Folder for the grid, the chosen delta and its test evaluation.")]
        ),
    ),
)


@app.command()
@user_errors
def stats(
    model: Model,
    corpus: Annotated[
        Path | None, typer.Option(help="Prompt corpus, one per line (default: the model's, else locoedit's).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Statistics file to write (default: locoedit's cache, reused by edits).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
    device: Device = None,
):
    """Precompute the preservation statistics (second moments of a prompt corpus's text rows) that edits use."""
    from locoedit.core.dtypes import dtype_named
    from locoedit.edit.preservation import compute_stats, corpus_prompts, corpus_stats
    from locoedit.models import load_adapter

    if out is not None and out.suffix != ".safetensors":
        raise LocoeditError(f"--out {out} must end in .safetensors")
    adapter = load_adapter(model, dtype_named(dtype), device)
    source, prompts = corpus_prompts(adapter, None if corpus is None else str(corpus))
    if out is None:
        computed = corpus_stats(adapter, prompts)
        where = "the cache (edits of this model with this corpus reuse it)"
    else:
        computed = compute_stats(adapter, prompts)
        computed.save(out)
        where = f"{out} (pass it to edits with --preserve-stats)"
    typer.echo(
        f"{computed.prompts} prompts of {source}, {computed.rows} text rows, {len(computed.sums)} input "
        f"space(s) -> {where}"
    )


def _apply(ctx: typer.Context, request: ApplyRequest, out: Path) -> None:
    from locoedit.delta import apply_with_card
    from locoedit.evaluate import read_evaluation

    evaluation = None if request.evaluation is None else read_evaluation(request.evaluation)
    written = apply_with_card(
        request.model, request.delta, out, evaluation=evaluation, device=request.device, strength=request.strength
    )
    typer.echo(f"wrote edited pipeline and its model card -> {written}")


request_command(
    app,
    "apply",
    ApplyRequest,
    _apply,
    "Apply a delta to MODEL and write the full edited pipeline (save_pretrained; loadable by plain diffusers), "
    "with a model card.",
    (option("out", Annotated[Path, typer.Option("--out", help="New folder for the edited diffusers pipeline.")]),),
)


def _export(ctx: typer.Context, request: ExportRequest, out: Path) -> None:
    from locoedit.delta import export_with_card
    from locoedit.evaluate import read_evaluation

    evaluation = None if request.evaluation is None else read_evaluation(request.evaluation)
    exported, card = export_with_card(
        request.delta, request.format, out, request.rank, evaluation=evaluation, strength=request.strength
    )
    typer.echo(
        f"wrote {exported.format} LoRA, {len(exported.errors)} matrices of rank {exported.rank} -> {out}; "
        f"model card -> {card}"
    )
    if request.rank is not None:
        worst = max(exported.errors, key=exported.errors.__getitem__)
        typer.echo(
            f"rank {exported.rank} of {exported.stored_rank}: relative error (Frobenius) of the truncation "
            f"max {exported.max_error:.4g} ({worst})"
        )


request_command(
    app,
    "export",
    ExportRequest,
    _export,
    "Write a delta as a LoRA file for diffusers' load_lora_weights, A1111 and ComfyUI (no model needed).",
    (
        option(
            "out",
            Annotated[
                Path,
                typer.Option(
                    "--out", help="LoRA file to write (.safetensors); its model card goes to README.md beside it."
                ),
            ],
        ),
    ),
)


def _evaluate(ctx: typer.Context, request: EvaluationRequest, out: Path, screenshot: bool) -> None:
    from locoedit.evaluate import evaluate_from_request

    result = evaluate_from_request(request, out, progress=ctx.obj)
    headline = result.headline
    typer.echo(f"suite {result.suite.name}: {len(result.items)} images before and after the edit")

    def show(value, percent=True):
        return "-" if value is None else (f"{100 * value:.1f}%" if percent else f"{value:.4g}")

    typer.echo(
        f"  efficacy {show(headline.efficacy)}  target adoption {show(headline.adoption)}  "
        f"generalization {show(headline.generalization)}  "
        f"specificity {show(headline.specificity)}  look-alikes {show(headline.lookalikes)}  "
        f"identity {show(headline.identity)}  "
        f"other attributes {show(headline.other_attributes)}"
    )
    typer.echo(
        f"  concept score {show(headline.concept_score_before, False)} -> "
        f"{show(headline.concept_score_after, False)}; unrelated SSIM {show(headline.ssim, False)}, "
        f"PSNR {show(headline.psnr, False)} dB; Frechet distance {show(headline.frechet_distance, False)}"
    )
    typer.echo(f"wrote {out / 'evaluation.json'} and {out / 'report.html'}")
    if screenshot:
        from locoedit.report.browser import check_page, find_chromium

        if find_chromium() is None:
            raise LocoeditError(
                "--screenshot needs Chromium (Debian: apt-get install -y chromium, or set $LOCOEDIT_CHROMIUM)"
            )
        check = check_page(out / "report.html", screenshot=out / "report.png")
        problems = check.broken_images + [r for r in check.missing_references if r not in check.broken_images]
        typer.echo(
            f"checked the report in Chromium: {check.images} images, "
            f"{'all load' if check.ok else 'broken: ' + ', '.join(problems)}; wrote {out / 'report.png'}"
        )
        if not check.ok:
            raise typer.Exit(1)


request_command(
    app,
    "evaluate",
    EvaluationRequest,
    _evaluate,
    "Evaluate an edit: efficacy, generalization, specificity and quality, before vs after with the same seeds.",
    (
        option("out", Annotated[Path, typer.Option(help="Folder for images, evaluation.json and report.html.")]),
        option(
            "screenshot",
            Annotated[
                bool,
                typer.Option(help="Open the report in headless Chromium: check every image and link, save report.png."),
            ],
            False,
        ),
    ),
)


@app.command()
@user_errors
def compare(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders of `locoedit localize` and `locoedit trace`, one model.")
    ],
    out: Annotated[Path, typer.Option(help="Folder for compare.html and compare.json.")],
):
    """Put LocoGen and causal-tracing runs of one model side by side, layer by layer."""
    from locoedit.workflows.compare import compare as run_compare

    comparison = run_compare(runs, out)
    for curve in comparison.curves:
        typer.echo(f"{curve.method:<15} {curve.run}: chosen layers {curve.chosen}")
    typer.echo(f"wrote {out / 'compare.html'} and {out / 'compare.json'}")


@app.command()
@user_errors
def demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for the report, JSON, deltas and images.")] = Path("runs/demo"),
    seeds: Annotated[
        int | None, typer.Option(help="Seeds per prompt, to override the plan's for a quick smoke run.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="A shipped toy model: toyworld (the UNet, default) or toyworld-mmdit (joint attention)."),
    ] = None,
):
    """The whole story on the shipped toy world: localize, edit and evaluate a style, an object and a fact."""
    from locoedit.workflows.demo import run_demo, summary_lines

    rows = run_demo(out, seeds=seeds, progress=ctx.obj, model=model)
    for line in summary_lines(rows):
        typer.echo(line)
    typer.echo(f"wrote {out / 'report.html'} and {out / 'demo.json'}")


@app.command()
@user_errors
def ui(
    model: Annotated[
        str, typer.Option(help="The model the forms start with: 'toyworld', a local pipeline folder or a hub id.")
    ] = "toyworld",
    port: Annotated[int, typer.Option(help="Port to serve the app on.")] = 7860,
    host: Annotated[str, typer.Option(help="Address to serve on (0.0.0.0: every network interface).")] = "127.0.0.1",
    runs: Annotated[
        Path, typer.Option(help="Folder for the run folders the app writes; their reports are served from it.")
    ] = Path("runs/ui"),
):
    """A local web app: localize, edit and evaluate in the browser (needs the ui extra: pip install -e ".[ui]")."""
    from locoedit.web.app import serve

    serve(
        model,
        port,
        runs,
        host,
        announce=lambda url: typer.echo(f"locoedit ui: {url} (run folders in {runs}); Ctrl-C stops"),
    )


def _add_toyworld_commands() -> None:
    from locoedit.cli.toyworld import app as toyworld_app

    app.add_typer(toyworld_app, name="toyworld", help="The toy world: check prompt following of the shipped model.")


_add_toyworld_commands()
