"""The ``edit``, ``neurons`` and ``apply`` commands; ``register(app)`` adds them to the ``locoedit`` typer app.

Thin: each command builds a request, calls the library (``locoedit.edit``, ``locoedit.neurons``,
``locoedit.delta``) and prints one line. Bad input prints ``error: ...`` and exits with status 2, writing nothing.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from locoedit.errors import LocoeditError

Model = Annotated[str, typer.Argument(help="A hub id, a local diffusers pipeline folder, or 'toyworld'.")]
Concepts = Annotated[list[str], typer.Option("--concept", help="Concept text to edit (repeat for several).")]
Targets = Annotated[list[str] | None, typer.Option("--target", help="What the concept should become (one, or one per concept).")]
Kind = Annotated[str, typer.Option(help="style, object or fact: picks the shipped prompt templates.")]
Prompts = Annotated[list[str] | None, typer.Option("--prompt", help="Prompt template with {c}, or a prompt containing the concept (repeat); default: the kind's templates.")]
Layers = Annotated[str, typer.Option(help="'auto' (run LocoGen first), indices like 8,9, or a `locoedit localize` run folder.")]
Token = Annotated[str, typer.Option(help="last-subject, all, eos or from-concept: which token rows to edit.")]
Dtype = Annotated[str, typer.Option(help="float32, float16 or bfloat16: the dtype the model is loaded and edited in.")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if available).")]
OutDelta = Annotated[Path, typer.Option("--out", help="Delta file to write (.safetensors).")]


def _user_errors(command):
    """A LocoeditError becomes one line on stderr and exit status 2, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LocoeditError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _check_out(out: Path) -> None:
    if out.suffix != ".safetensors":
        raise LocoeditError(f"--out {out} must end in .safetensors (a delta file)")


@_user_errors
def edit(
    model: Model,
    concept: Concepts,
    out: OutDelta,
    target: Targets = None,
    kind: Kind = "object",
    prompt: Prompts = None,
    layers: Layers = "auto",
    preserve: Annotated[list[str] | None, typer.Option("--preserve", help="Prompt whose keys and values should stay (repeat).")] = None,
    preserve_scale: Annotated[float, typer.Option(help="Weight of the preservation rows.")] = 1.0,
    lambda_key: Annotated[float, typer.Option("--lambda-key", help="Regulariser of the key edits (> 0).")] = 0.1,
    lambda_value: Annotated[float, typer.Option("--lambda-value", help="Regulariser of the value edits (> 0).")] = 0.1,
    token: Token = "last-subject",
    window: Annotated[int, typer.Option(help="LocoGen window size for --layers auto.")] = 2,
    dtype: Dtype = "float32",
    device: Device = None,
):
    """LocoEdit: closed-form edit of the key/value projections of the localized layers; writes a delta file."""
    from locoedit.edit import EditRequest, edit_to_file, parse_layers

    _check_out(out)
    if not target:
        raise LocoeditError("give --target: what the concept should become (e.g. --target 'a painting')")
    request = EditRequest(
        model=model, concepts=tuple(concept), targets=tuple(target), kind=kind, prompts=tuple(prompt or ()),
        layers=parse_layers(layers), preserve=tuple(preserve or ()), preserve_scale=preserve_scale,
        lambda_key=lambda_key, lambda_value=lambda_value, token=token, dtype=dtype, device=device,
        auto_window=window,
    )
    delta = edit_to_file(request, out)
    names = ", ".join(str(layer["index"]) for layer in delta.layers)
    typer.echo(f"edited layers {names} ({len(delta.tensors)} matrices, {delta.settings['concept_rows']} concept rows) -> {out}")


@_user_errors
def neurons(
    model: Model,
    concept: Concepts,
    out: OutDelta,
    neutral: Annotated[list[str] | None, typer.Option("--neutral", help="Neutral prompt (repeat); default: the prompts with --target in the concept's place.")] = None,
    target: Targets = None,
    kind: Kind = "object",
    prompt: Prompts = None,
    layers: Layers = "auto",
    top_k: Annotated[int, typer.Option("--top-k", help="Neurons replaced per key/value projection.")] = 8,
    token: Token = "last-subject",
    window: Annotated[int, typer.Option(help="LocoGen window size for --layers auto.")] = 2,
    dtype: Dtype = "float32",
    device: Device = None,
):
    """Neuron-level edit: replace the key/value neurons that respond most to the concept by their neutral mean."""
    from locoedit.edit import parse_layers
    from locoedit.neurons import NeuronRequest, neurons_from_request

    _check_out(out)
    request = NeuronRequest(
        model=model, concepts=tuple(concept), neutral=tuple(neutral or ()), targets=tuple(target or ()), kind=kind,
        prompts=tuple(prompt or ()), layers=parse_layers(layers), top_k=top_k, token=token, dtype=dtype,
        device=device, auto_window=window,
    )
    delta = neurons_from_request(request)
    delta.save(out)
    count = sum(len(item["neurons"]) for item in delta.settings["chosen_neurons"])
    typer.echo(f"replaced {count} neurons in layers {', '.join(str(l['index']) for l in delta.layers)} -> {out}")


@_user_errors
def apply(
    model: Model,
    delta: Annotated[Path, typer.Argument(help="Delta file written by `locoedit edit` or `locoedit neurons`.")],
    out: Annotated[Path, typer.Option("--out", help="New folder for the edited diffusers pipeline.")],
    device: Device = None,
):
    """Apply a delta to MODEL and write the full edited pipeline (save_pretrained; loadable by plain diffusers)."""
    from locoedit.delta import apply_delta_to_folder

    written = apply_delta_to_folder(model, delta, out, device=device)
    typer.echo(f"wrote edited pipeline -> {written}")


def register(app: typer.Typer) -> None:
    """Add ``edit``, ``neurons`` and ``apply`` to ``app``."""
    app.command("edit")(edit)
    app.command("neurons")(neurons)
    app.command("apply")(apply)
