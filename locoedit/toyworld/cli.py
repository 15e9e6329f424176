"""``locoedit toyworld ...``: commands about the shipped toy world."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import typer

app = typer.Typer(help="The toy world: a tiny text-to-image model with ground truth.", no_args_is_help=True)
logger = logging.getLogger(__name__)


def parse_seeds(text: str) -> list[int]:
    """``"0-99"`` -> 0..99; ``"1,5,7-9"`` -> [1, 5, 7, 8, 9]."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                if int(hi) < int(lo):
                    raise ValueError
                seeds.extend(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise typer.BadParameter(f"seeds must look like '0-99' or '1,5,7-9', got {text!r}") from None
    if not seeds:
        raise typer.BadParameter("no seeds given")
    return seeds


def load_defaults(model_dir: Path | None = None) -> dict:
    from . import DEFAULTS_PATH

    path = DEFAULTS_PATH if model_dir is None else Path(model_dir).parent / "defaults.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_pipeline(model_dir: Path | None = None):
    """The shipped toy-world pipeline (or one at ``model_dir``), on CPU, progress bar off."""
    from diffusers import StableDiffusionPipeline

    from . import MODEL_DIR

    path = Path(model_dir) if model_dir is not None else MODEL_DIR
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(
            f"no toy-world pipeline at {path}; train one with `python -m locoedit.toyworld.train --install`"
        )
    pipe = StableDiffusionPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@app.command()
def check(
    seeds: str = typer.Option("0-99", help="seeds, e.g. 0-99 or 1,5,7-9; one object and one fact prompt per seed"),
    steps: int | None = typer.Option(None, help="denoising steps (default: defaults.json)"),
    guidance: float | None = typer.Option(None, help="classifier-free guidance scale (default: defaults.json)"),
    model: Path | None = typer.Option(None, help="a toy-world pipeline folder (default: the shipped one)"),
    probe: Path | None = typer.Option(None, help="probe weights (default: the shipped probe)"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the full result (with every sample) here"),
    batch_size: int = typer.Option(128, help="images per pipeline call"),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)"),
) -> None:
    """Generate from held-out captions and print the probe's per-attribute accuracy."""
    import torch

    from .evaluate import TARGETS, check_prompt_following, format_table
    from .probe import ToyworldProbe

    if threads:
        torch.set_num_threads(threads)
    defaults = load_defaults(model)
    steps = steps or defaults.get("num_inference_steps", 20)
    guidance = guidance if guidance is not None else defaults.get("guidance_scale", 3.0)
    seed_list = parse_seeds(seeds)
    pipe = load_pipeline(model)
    scorer = ToyworldProbe.load(probe) if probe is not None else ToyworldProbe.load(
        None if model is None else Path(model).parent / "probe.safetensors"
    )
    t0 = time.perf_counter()
    result = check_prompt_following(pipe, scorer, seeds=seed_list, steps=steps, guidance=guidance,
                                    batch_size=batch_size)
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
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
        typer.echo(f"wrote {json_out}")


@app.command()
def caption(text: str = typer.Argument(..., help="a caption, e.g. 'a red striped circle on black'")) -> None:
    """Parse a caption into the attributes it states (errors name unknown words)."""
    from .world import parse_caption

    try:
        typer.echo(json.dumps(parse_caption(text)))
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


@app.command()
def vocab() -> None:
    """List the toy world's vocabulary."""
    from .world import load_vocab

    typer.echo(load_vocab().describe())


if __name__ == "__main__":
    app()
