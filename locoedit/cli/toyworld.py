"""``locoedit toyworld ...``: commands about the shipped toy world."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from locoedit.cli.errors import user_errors
from locoedit.core.errors import LocoeditError
from locoedit.core.io import write_json
from locoedit.core.seeds import parse_seeds

app = typer.Typer(help="The toy world: a tiny text-to-image model with ground truth.", no_args_is_help=True)

CHECK_FORMAT = "locoedit.toyworld-check/1"


@app.command()
@user_errors
def check(
    ctx: typer.Context,
    seeds: str = typer.Option("0-99", help="seeds, e.g. 0-99 or 1,5,7-9; one object and one fact prompt per seed"),
    steps: int | None = typer.Option(None, help="denoising steps (default: the model folder's locoedit.json)"),
    guidance: float | None = typer.Option(None, help="classifier-free guidance scale (default: locoedit.json)"),
    model: Path | None = typer.Option(None, help="a toy-world pipeline folder (default: the shipped one)"),
    probe: Path | None = typer.Option(None, help="probe weights (default: the shipped probe)"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the full result (with every sample) here"),
    batch_size: int = typer.Option(128, help="images per pipeline call"),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)"),
) -> None:
    """Generate from held-out captions and print the probe's per-attribute accuracy."""
    import torch

    from locoedit.core.progress import ProgressTask
    from locoedit.toyworld import sampling_defaults
    from locoedit.toyworld.evaluate import TARGETS, check_prompt_following, format_table
    from locoedit.toyworld.models import load_pipeline
    from locoedit.toyworld.probe import ToyworldProbe

    if batch_size < 1:
        raise LocoeditError(f"--batch-size {batch_size} must be >= 1")
    if threads:
        torch.set_num_threads(threads)
    seed_list = parse_seeds(seeds)
    if model is not None and not (Path(model) / "model_index.json").is_file():
        raise LocoeditError(
            f"--model {model}: not a toy-world pipeline folder (no model_index.json); give the "
            "pipeline folder written by locoedit.toyworld.train"
        )
    probe_file = probe if probe is not None else None if model is None else Path(model).parent / "probe.safetensors"
    try:
        scorer = ToyworldProbe.load(probe_file)
    except Exception as error:  # a missing, damaged or foreign file fails in safetensors or in the probe's own checks
        raise LocoeditError(
            f"--probe {probe_file}: not a toy-world probe ({type(error).__name__}: {error}); give the "
            "probe.safetensors written by locoedit.toyworld.train"
        ) from None
    try:
        defaults = sampling_defaults(model)
        pipe = load_pipeline(model)
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as error:
        raise LocoeditError(f"--model {model}: not a toy-world pipeline folder ({error})") from None
    steps = steps or defaults["num_inference_steps"]
    guidance = guidance if guidance is not None else defaults["guidance_scale"]
    task = ProgressTask(ctx.obj, "generate", 2 * len(seed_list), unit="image")
    t0 = time.perf_counter()
    result = check_prompt_following(
        pipe, scorer, seeds=seed_list, steps=steps, guidance=guidance, batch_size=batch_size, on_images=task.advance
    )
    result["seconds"] = time.perf_counter() - t0
    typer.echo(
        f"prompt following: {result['n_object']} held-out object prompts + {result['n_fact']} fact prompts, "
        f"seeds {seeds}, {steps} steps, guidance {guidance} ({result['seconds']:.1f} s)"
    )
    typer.echo(format_table(result))
    missed = [a for a, t in TARGETS.items() if result["accuracy"].get(a, 0.0) < t]
    if missed:
        typer.echo(f"below target: {', '.join(missed)}")
    if json_out is not None:
        write_json(json_out, {"format": CHECK_FORMAT, **result})
        typer.echo(f"wrote {json_out}")


@app.command()
def caption(text: str = typer.Argument(..., help="a caption, e.g. 'a red striped circle on black'")) -> None:
    """Parse a caption into the attributes it states (errors name unknown words)."""
    from locoedit.toyworld.world import parse_caption

    try:
        typer.echo(json.dumps(parse_caption(text)))
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


@app.command()
def vocab() -> None:
    """List the toy world's vocabulary."""
    from locoedit.toyworld.world import load_vocab

    typer.echo(load_vocab().describe())
