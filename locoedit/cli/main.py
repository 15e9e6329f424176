"""The ``locoedit`` command line: a thin layer over the library."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from locoedit.cli.errors import user_errors
from locoedit.cli.progress import terminal_progress
from locoedit.core.errors import LocoeditError
from locoedit.core.formats import field_default as default
from locoedit.core.formats import to_plain
from locoedit.core.processes import is_main_process
from locoedit.core.seeds import parse_seeds, seeds_text
from locoedit.edit import EditRequest
from locoedit.edit.layers import parse_layers
from locoedit.edit.neurons import NeuronRequest
from locoedit.evaluate import EvaluationRequest
from locoedit.localize import LocalizationRequest, Screen, parse_window
from locoedit.trace import TraceRequest
from locoedit.workflows.generate import GenerationRequest
from locoedit.workflows.tune import TuneRequest

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


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
    if not verbose:  # advice meant for the libraries' own users (e.g. "install torchvision"), not for ours
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()  # their loading bars; ours follow --progress
        transformers_logging.disable_progress_bar()
    # The progress callback every command hands the library; under a launcher, the main process draws.
    ctx.obj = terminal_progress(progress) if is_main_process() else None


Model = Annotated[str, typer.Argument(help="A hub id, a local diffusers pipeline folder, or 'toyworld'.")]
Dtype = Annotated[str, typer.Option(help="float32, float16 or bfloat16.")]
L, E, N = LocalizationRequest, EditRequest, NeuronRequest
Device = Annotated[
    str | None,
    typer.Option(help="cpu, cuda, cuda:1, ... (default: cuda if available; under a launcher, each process's own)."),
]
ScreenOption = Annotated[
    str | None,
    typer.Option(
        help="STEPS:SEEDS:TOPK: rank every window on fewer steps and seeds, then give only the top k the full budget (default: off)."
    ),
]


@app.command()
@user_errors
def layers(
    model: Model,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """List the cross-attention layers in execution order (the paper's numbering)."""
    from locoedit.models import load_adapter

    adapter = load_adapter(model, device="cpu")
    rows = [to_plain(layer.info) for layer in adapter.layers]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'index':>5}  {'block':<11} {'res':>4}  {'edits':<22} module")
    for row in rows:
        typer.echo(
            f"{row['index']:>5}  {row['block']:<11} {row['resolution']:>4}  {'/'.join(row['edit_projections']):<22} "
            f"{row['name']}"
        )


@app.command()
@user_errors
def localize(
    ctx: typer.Context,
    model: Model,
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Original prompt (repeatable).")],
    target: Annotated[
        list[str], typer.Option("--target", "-t", help="The prompt with the concept removed (one per --prompt).")
    ],
    out: Annotated[Path, typer.Option(help="Run folder: JSON, images, report.html. Rerun to resume.")],
    concept: Annotated[str, typer.Option(help="Text to score; default: the words the target drops.")] = "",
    scorer: Annotated[
        str | None,
        typer.Option(
            help="pixel, toyworld or clip:ID_OR_FOLDER (default: the model's concept scorer: the probe for the toy world, the paper's CLIP otherwise)."
        ),
    ] = None,
    window: Annotated[str, typer.Option(help="Window size m, or 'auto'.")] = str(default(L, "window")),
    threshold: Annotated[
        float, typer.Option(help="For --window auto: fraction of the all-layer effect a window must reach.")
    ] = default(L, "auto_threshold"),
    seeds: Annotated[str, typer.Option(help="e.g. 0,1,2,3 or 0-15.")] = seeds_text(default(L, "seeds")),
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the model's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
    size: Annotated[int | None, typer.Option(help="Image height and width in pixels.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="A diffusers scheduler class, e.g. DDIMScheduler.")] = None,
    mode: Annotated[str, typer.Option(help="exact (one loop per window, as the paper) or batched.")] = default(
        L, "mode"
    ),
    chunk: Annotated[int, typer.Option(help="Windows per denoising loop in batched mode.")] = default(L, "chunk"),
    route_added_text: Annotated[bool, typer.Option(help="Also route SD-XL pooled / IF time-embedding text.")] = default(
        L, "route_added_text"
    ),
    screen: ScreenOption = None,
    dtype: Dtype = default(L, "dtype"),
    device: Device = None,
):
    """LocoGen: find the window of cross-attention layers that controls a concept (`accelerate launch` shares it)."""
    from locoedit.localize import localize as run_localize

    request = LocalizationRequest(
        model=model,
        prompts=tuple(prompt),
        targets=tuple(target),
        concept=concept,
        scorer=scorer,
        window=parse_window(window),
        auto_threshold=threshold,
        seeds=parse_seeds(seeds),
        steps=steps,
        guidance=guidance,
        height=size,
        width=size,
        scheduler=scheduler,
        mode=mode,
        chunk=chunk,
        dtype=dtype,
        device=device,
        route_added_text=route_added_text,
        screen=Screen.parse(screen) if screen else None,
    )
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
    screen: ScreenOption = None,
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


@app.command()
@user_errors
def trace(
    ctx: typer.Context,
    model: Model,
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt that shows the concept (repeatable).")],
    concept: Annotated[str, typer.Option(help="Words of the prompts to corrupt; also the text the scorer scores.")],
    out: Annotated[Path, typer.Option(help="New folder: trace.json, images, report.html.")],
    scorer: Annotated[
        str | None,
        typer.Option(
            help="pixel (distance to the clean image), toyworld or clip:ID_OR_FOLDER (default: the model's concept scorer)."
        ),
    ] = None,
    noise: Annotated[float, typer.Option(help="Noise sigma in standard deviations of the token embeddings.")] = default(
        TraceRequest, "noise"
    ),
    seeds: Annotated[str, typer.Option(help="e.g. 0,1,2,3 or 0-15.")] = seeds_text(default(TraceRequest, "seeds")),
    part: Annotated[
        list[str] | None, typer.Option("--part", help="denoiser and/or text_encoder (default: both).")
    ] = None,
    site: Annotated[
        list[str] | None, typer.Option("--site", help="Only these sites (pipeline paths; see `locoedit sites`).")
    ] = None,
    restore_tokens: Annotated[
        str, typer.Option(help="Text-encoder sites: restore the concept's last token, or all.")
    ] = default(TraceRequest, "restore_tokens"),
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the model's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
    size: Annotated[int | None, typer.Option(help="Image height and width in pixels.")] = None,
    chunk: Annotated[int, typer.Option(help="Sites per denoising loop.")] = default(TraceRequest, "chunk"),
    dtype: Dtype = default(TraceRequest, "dtype"),
    device: Device = None,
):
    """Causal tracing: corrupt the concept's text, restore one site's clean state at a time, see what comes back."""
    from locoedit.trace import trace as run_trace

    request = TraceRequest(
        model=model,
        prompts=tuple(prompt),
        concept=concept,
        scorer=scorer,
        noise=noise,
        seeds=parse_seeds(seeds),
        parts=tuple(part) if part else default(TraceRequest, "parts"),
        sites=tuple(site or ()),
        restore_tokens=restore_tokens,
        steps=steps,
        guidance=guidance,
        height=size,
        width=size,
        chunk=chunk,
        dtype=dtype,
        device=device,
    )
    result = run_trace(request, out=out, progress=ctx.obj)
    typer.echo(
        f"concept {result.concept!r}: clean score {result.clean_score:.4g}, corrupted {result.corrupted_score:.4g}"
    )
    if result.note:
        typer.echo(result.note)
    for name in ("denoiser", "text_encoder"):
        ranked = sorted((s for s in result.sites if s.part == name and s.effect is not None), key=lambda s: -s.effect)
        for site_effect in ranked[:5]:
            typer.echo(f"  {name:<12} {site_effect.effect:+.3f} +- {site_effect.effect_std:.3f}  {site_effect.name}")
    typer.echo(f"wrote {out / 'trace.json'} and {out / 'report.html'}")


@app.command()
@user_errors
def sites(model: Model):
    """List the sites causal tracing restores, per part, in execution order."""
    from locoedit.models import load_adapter
    from locoedit.trace import denoiser_sites, text_encoder_sites

    adapter = load_adapter(model, device="cpu")
    for site_ in denoiser_sites(adapter) + text_encoder_sites(adapter):
        typer.echo(f"{site_.part:<12} {site_.index:>4}  {site_.kind:<18} {site_.name}")


@app.command()
@user_errors
def generate(
    ctx: typer.Context,
    model: Model,
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt (repeatable).")],
    out: Annotated[Path, typer.Option(help="Folder for the PNGs and generation.json.")] = Path("generated"),
    seeds: Annotated[str, typer.Option(help="e.g. 0-15.")] = seeds_text(default(GenerationRequest, "seeds")),
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the model's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
    size: Annotated[int | None, typer.Option(help="Image height and width in pixels.")] = None,
    dtype: Dtype = default(GenerationRequest, "dtype"),
    device: Device = None,
):
    """Generate images for prompts and seeds with any supported model."""
    from locoedit.workflows.generate import generate_to_folder

    request = GenerationRequest(model, tuple(prompt), parse_seeds(seeds), steps, guidance, size, dtype, device)
    record = generate_to_folder(request, out, progress=ctx.obj)
    typer.echo(f"wrote {len(record.images)} images and {out / 'generation.json'}")


Concepts = Annotated[list[str], typer.Option("--concept", help="Concept text to edit (repeat for several).")]
Targets = Annotated[
    list[str] | None, typer.Option("--target", help="What the concept should become (one, or one per concept).")
]
Kind = Annotated[str, typer.Option(help="style, object or fact: picks the shipped prompt templates.")]
Prompts = Annotated[
    list[str] | None,
    typer.Option(
        "--prompt",
        help="Prompt template with {c}, or a prompt containing the concept (repeat); default: the kind's templates.",
    ),
]
Layers = Annotated[
    str, typer.Option(help="'auto' (run LocoGen first), indices like 8,9, or a `locoedit localize` run folder.")
]
Token = Annotated[
    str | None,
    typer.Option(
        help="last-subject, all, eos or from-concept: which token rows to edit (default: the model folder's, else last-subject)."
    ),
]
OutDelta = Annotated[Path, typer.Option("--out", help="Delta file to write (.safetensors).")]


@app.command()
@user_errors
def edit(
    ctx: typer.Context,
    model: Model,
    concept: Concepts,
    out: OutDelta,
    target: Targets = None,
    kind: Kind = default(E, "kind"),
    prompt: Prompts = None,
    layers: Layers = default(E, "layers"),
    preserve: Annotated[
        list[str] | None, typer.Option("--preserve", help="Prompt whose keys and values should stay (repeat).")
    ] = None,
    preserve_scale: Annotated[float, typer.Option(help="Weight of each --preserve prompt's rows.")] = default(
        E, "preserve_scale"
    ),
    preserve_neighbours: Annotated[
        float, typer.Option(help="Weight of the neighbouring concepts (the concept's group); 0: off.")
    ] = default(E, "preserve_neighbours"),
    preserve_general: Annotated[float, typer.Option(help="Weight of the general prompt corpus; 0: off.")] = default(
        E, "preserve_general"
    ),
    neighbour: Annotated[
        list[str] | None,
        typer.Option(
            "--neighbour", help="Concept to keep (repeat); default: the concept's group in the model's lists."
        ),
    ] = None,
    preserve_corpus: Annotated[
        Path | None,
        typer.Option(help="General corpus: a text file, one prompt per line (default: the model's, else locoedit's)."),
    ] = None,
    preserve_stats: Annotated[
        Path | None, typer.Option(help="The corpus's statistics from `locoedit stats --out` (default: cached).")
    ] = None,
    lambda_key: Annotated[float, typer.Option("--lambda-key", help="Regulariser of the key edits (> 0).")] = default(
        E, "lambda_key"
    ),
    lambda_value: Annotated[
        float, typer.Option("--lambda-value", help="Regulariser of the value edits (> 0).")
    ] = default(E, "lambda_value"),
    token: Token = default(E, "token"),
    window: Annotated[
        str,
        typer.Option(help="LocoGen window size for --layers auto, or 'auto': the smallest that reaches --threshold."),
    ] = str(default(E, "auto_window")),
    threshold: Annotated[
        float, typer.Option(help="For --window auto: fraction of the all-layer effect a window must reach.")
    ] = default(E, "auto_threshold"),
    auto_scorer: Annotated[
        str | None, typer.Option(help="Scorer of LocoGen for --layers auto (default: the model's concept scorer).")
    ] = None,
    dtype: Dtype = default(E, "dtype"),
    device: Device = None,
):
    """LocoEdit: closed-form edit of the key/value projections of the localized layers; writes a delta file."""
    from locoedit.edit import edit_to_file

    request = EditRequest(
        model=model,
        concepts=tuple(concept),
        targets=tuple(target or ()),
        kind=kind,
        prompts=tuple(prompt or ()),
        layers=parse_layers(layers),
        preserve=tuple(preserve or ()),
        preserve_scale=preserve_scale,
        preserve_neighbours=preserve_neighbours,
        preserve_general=preserve_general,
        neighbours=tuple(neighbour or ()),
        preserve_corpus=None if preserve_corpus is None else str(preserve_corpus),
        preserve_stats=None if preserve_stats is None else str(preserve_stats),
        lambda_key=lambda_key,
        lambda_value=lambda_value,
        token=token,
        dtype=dtype,
        device=device,
        auto_window=parse_window(window),
        auto_threshold=threshold,
        auto_scorer=auto_scorer,
    )
    delta = edit_to_file(request, out, progress=ctx.obj)
    names = ", ".join(str(layer["index"]) for layer in delta.layers)
    typer.echo(
        f"edited layers {names} ({len(delta.parameters)} matrices, {delta.settings['concept_rows']} concept rows) -> {out}"
    )


@app.command()
@user_errors
def tune(
    ctx: typer.Context,
    model: Model,
    concept: Concepts,
    out: Annotated[Path, typer.Option(help="Folder for the grid, the chosen delta and its test evaluation.")],
    target: Targets = None,
    kind: Kind = default(TuneRequest, "kind"),
    suite: Annotated[
        str | None, typer.Option(help="Suite with a validation split (default: the shipped one for the concept).")
    ] = None,
    windows: Annotated[int, typer.Option(help="How many of LocoGen's best windows to try.")] = default(
        TuneRequest, "windows"
    ),
    window: Annotated[str, typer.Option(help="LocoGen window size, or 'auto'.")] = str(default(TuneRequest, "window")),
    token: Annotated[list[str] | None, typer.Option("--token", help="Token rows to try (repeat).")] = None,
    preserve_neighbours: Annotated[
        list[float] | None, typer.Option("--preserve-neighbours", help="Neighbour weights to try (repeat).")
    ] = None,
    preserve_general: Annotated[
        list[float] | None, typer.Option("--preserve-general", help="General-corpus weights to try (repeat).")
    ] = None,
    lam: Annotated[
        list[float] | None, typer.Option("--lambda", help="Lambdas to try, keys and values alike (repeat).")
    ] = None,
    dtype: Dtype = default(TuneRequest, "dtype"),
    device: Device = None,
):
    """Choose an edit's settings on a suite's validation split; write the chosen delta and its test-split figures."""
    from locoedit.workflows.tune import tune as run_tune

    grid = {
        name: tuple(values)
        for name, values in (
            ("tokens", token),
            ("preserve_neighbours", preserve_neighbours),
            ("preserve_general", preserve_general),
            ("lambdas", lam),
        )
        if values
    }
    request = TuneRequest(
        model=model,
        concepts=tuple(concept),
        targets=tuple(target or ()),
        kind=kind,
        suite=suite,
        windows=windows,
        window=parse_window(window),
        dtype=dtype,
        device=device,
        **grid,
    )
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
    dtype: Dtype = default(E, "dtype"),
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


@app.command()
@user_errors
def neurons(
    ctx: typer.Context,
    model: Model,
    concept: Concepts,
    out: OutDelta,
    neutral: Annotated[
        list[str] | None,
        typer.Option(
            "--neutral", help="Neutral prompt (repeat); default: the prompts with --target in the concept's place."
        ),
    ] = None,
    target: Targets = None,
    kind: Kind = default(N, "kind"),
    prompt: Prompts = None,
    layers: Layers = default(N, "layers"),
    top_k: Annotated[int, typer.Option("--top-k", help="Neurons replaced per key/value projection.")] = default(
        N, "top_k"
    ),
    token: Token = default(N, "token"),
    window: Annotated[
        str,
        typer.Option(help="LocoGen window size for --layers auto, or 'auto': the smallest that reaches --threshold."),
    ] = str(default(N, "auto_window")),
    threshold: Annotated[
        float, typer.Option(help="For --window auto: fraction of the all-layer effect a window must reach.")
    ] = default(N, "auto_threshold"),
    dtype: Dtype = default(N, "dtype"),
    device: Device = None,
):
    """Neuron-level edit: replace the key/value neurons that respond most to the concept by their neutral mean."""
    from locoedit.edit.neurons import neurons_to_file

    request = NeuronRequest(
        model=model,
        concepts=tuple(concept),
        neutral=tuple(neutral or ()),
        targets=tuple(target or ()),
        kind=kind,
        prompts=tuple(prompt or ()),
        layers=parse_layers(layers),
        top_k=top_k,
        token=token,
        dtype=dtype,
        device=device,
        auto_window=parse_window(window),
        auto_threshold=threshold,
    )
    delta = neurons_to_file(request, out, progress=ctx.obj)
    count = sum(len(item["neurons"]) for item in delta.settings["chosen_neurons"])
    typer.echo(
        f"replaced {count} neurons in layers {', '.join(str(layer['index']) for layer in delta.layers)} -> {out}"
    )


Evaluation = Annotated[
    Path | None,
    typer.Option(
        "--evaluation", help="A `locoedit evaluate` folder of this edit: its headline goes into the model card."
    ),
]


@app.command()
@user_errors
def apply(
    model: Model,
    delta: Annotated[Path, typer.Argument(help="Delta file written by `locoedit edit` or `locoedit neurons`.")],
    out: Annotated[Path, typer.Option("--out", help="New folder for the edited diffusers pipeline.")],
    evaluation: Evaluation = None,
    device: Device = None,
):
    """Apply a delta to MODEL and write the full edited pipeline (save_pretrained; loadable by plain diffusers), with a model card."""
    from locoedit.workflows.card import apply_with_card

    written = apply_with_card(model, delta, out, evaluation=evaluation, device=device)
    typer.echo(f"wrote edited pipeline and its model card -> {written}")


@app.command()
@user_errors
def export(
    delta: Annotated[Path, typer.Argument(help="Delta file written by `locoedit edit` or `locoedit neurons`.")],
    format: Annotated[
        str,
        typer.Option("--format", help="kohya (A1111, ComfyUI; diffusers converts it) or peft (diffusers' own layout)."),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="LoRA file to write (.safetensors); its model card goes to README.md beside it."),
    ],
    rank: Annotated[
        int | None, typer.Option(help="Keep the R largest singular values of each update; prints the error.")
    ] = None,
    evaluation: Evaluation = None,
):
    """Write a delta as a LoRA file for diffusers' load_lora_weights, A1111 and ComfyUI (no model needed)."""
    from locoedit.workflows.card import export_with_card

    exported, card = export_with_card(delta, format, out, rank=rank, evaluation=evaluation)
    typer.echo(
        f"wrote {exported.format} LoRA, {len(exported.errors)} matrices of rank {exported.rank} -> {out}; "
        f"model card -> {card}"
    )
    if rank is not None:
        worst = max(exported.errors, key=exported.errors.get)
        typer.echo(
            f"rank {exported.rank} of {exported.stored_rank}: relative error (Frobenius) of the truncation "
            f"max {exported.max_error:.4g} ({worst})"
        )


@app.command()
@user_errors
def evaluate(
    ctx: typer.Context,
    model: Model,
    edit: Annotated[Path, typer.Option("--edit", help="Delta file written by `locoedit edit` or `locoedit neurons`.")],
    out: Annotated[Path, typer.Option(help="Folder for images, evaluation.json and report.html.")],
    suite: Annotated[
        str | None,
        typer.Option(
            help="A shipped suite name (e.g. toyworld-style-kandinsky) or a suite .json file; default: the shipped suite for the delta's concept."
        ),
    ] = None,
    scorer: Annotated[
        str | None,
        typer.Option(help="toyworld or clip:ID_OR_FOLDER (default: the suite's, else the model's concept scorer)."),
    ] = None,
    localization: Annotated[
        Path | None,
        typer.Option(help="A `locoedit localize` run folder: adds its per-layer effect curve to the report."),
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Override the suite's seeds, e.g. 0-7.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the suite's, else the model's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
    size: Annotated[int | None, typer.Option(help="Image height and width in pixels.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per denoising loop.")] = default(
        EvaluationRequest, "batch_size"
    ),
    screenshot: Annotated[
        bool, typer.Option(help="Open the report in headless Chromium: check every image and link, save report.png.")
    ] = False,
    dtype: Annotated[str | None, typer.Option(help="float32, float16 or bfloat16 (default: the delta's).")] = None,
    device: Device = None,
):
    """Evaluate an edit: efficacy, generalization, specificity and quality, before vs after with the same seeds."""
    from locoedit.evaluate import evaluate_from_request

    request = EvaluationRequest(
        model=model,
        edit=str(edit),
        suite=suite,
        scorer=scorer,
        localization=None if localization is None else str(localization),
        seeds=parse_seeds(seeds) if seeds else (),
        steps=steps,
        guidance=guidance,
        size=size,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
    )
    result = evaluate_from_request(request, out, progress=ctx.obj)
    headline = result.headline
    typer.echo(f"suite {result.suite.name}: {len(result.items)} images before and after the edit")

    def show(value, percent=True):
        return "-" if value is None else (f"{100 * value:.1f}%" if percent else f"{value:.4g}")

    typer.echo(
        f"  efficacy {show(headline.efficacy)}  generalization {show(headline.generalization)}  "
        f"specificity {show(headline.specificity)}  identity {show(headline.identity)}  "
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
):
    """The whole story on the shipped toy world: localize, edit and evaluate a style, an object and a fact."""
    from locoedit.workflows.demo import run_demo, summary_lines

    rows = run_demo(out, seeds=seeds, progress=ctx.obj)
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
