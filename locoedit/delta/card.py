"""Hugging Face model cards (``README.md``) for what ``locoedit apply`` and ``locoedit export`` write.

The card's YAML header is built with ``huggingface_hub.ModelCardData`` (base model, library, license placeholder,
tags, and a ``locoedit`` block with the method, layers, concepts, lambdas, preservation and, when an evaluation
folder is given, its headline); the body says how to load the result and repeats the settings as tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from locoedit.core.errors import LocoeditError
from locoedit.core.formats import to_plain
from locoedit.core.io import write_text
from locoedit.delta.apply import apply_delta_to_folder
from locoedit.delta.export import LoraExport, check_exportable, export_lora
from locoedit.delta.file import EditDelta, check_strength


class EvaluationResult(Protocol):
    """What a card reads of an evaluation: a ``locoedit.evaluate.EvaluationResult`` (read with
    ``locoedit.evaluate.read_evaluation``); the evaluation layer sits above this one."""

    delta: Any  # which edit it evaluated: method, layers, parameters, path
    suite: Any  # its name
    scorer: str

    @property
    def headline(self) -> Any: ...  # the figures (a property of the evaluation, read only)


_SETTINGS = (
    "concepts",
    "targets",
    "kind",
    "token",
    "lambda_key",
    "lambda_value",
    "preserve",
    "preserve_scale",
    "top_k",
    "neutral",
)  # what a reader of the card needs from a delta's settings, when present


def check_evaluation(evaluation: EvaluationResult, delta: EditDelta) -> None:
    """Refuse an evaluation (``locoedit.evaluate.read_evaluation``) of another edit than ``delta``."""
    summary = evaluation.delta
    if (summary.method, summary.layers, list(summary.parameters)) != (delta.method, delta.layers, delta.parameters):
        raise LocoeditError(
            f"the evaluation given evaluates another edit ({summary.path}); give the folder `locoedit evaluate "
            "--edit` wrote for this delta"
        )


def model_card(
    delta: EditDelta,
    usage: str,
    evaluation: EvaluationResult | None = None,
    lora: LoraExport | None = None,
    strength: float = 1.0,
) -> str:
    """The README.md text: YAML metadata for the Hub, then what the edit is and how to load it (``usage``)."""
    from huggingface_hub import ModelCard, ModelCardData

    settings = {key: delta.settings[key] for key in _SETTINGS if key in delta.settings}
    record = {"method": delta.method, "layers": delta.layers, **settings, "locoedit_version": delta.version}
    if strength != 1.0:
        settings["strength"] = record["strength"] = strength
    if lora is not None:
        record["lora"] = {
            "format": lora.format,
            "rank": lora.rank,
            "stored_rank": lora.stored_rank,
            "truncation_error": lora.max_error,
        }
    if evaluation is not None:
        record["evaluation"] = {"suite": evaluation.suite.name, **to_plain(evaluation.headline)}
    tags = ["locoedit", "concept-editing", f"locoedit-{delta.method}", "text-to-image"]
    data = ModelCardData(
        base_model=delta.base_model,
        library_name="diffusers",
        license="other",
        tags=tags + (["lora"] if lora is not None else []),
        locoedit=record,
    )
    concepts = ", ".join(repr(c) for c in delta.settings.get("concepts", [])) or "-"
    lines = [
        f"# {delta.base_model}, edited by locoedit ({delta.method}): {concepts}",
        "",
        f"A closed-form edit of the cross-attention layers {', '.join(str(layer['index']) for layer in delta.layers)} "
        f"of `{delta.base_model}`, computed by locoedit {delta.version} "
        "(LocoGen / LocoEdit, Basu et al., ICML 2024). No training was involved.",
        "",
        "## How to use",
        "",
        usage,
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {key} | {_cell(value)} |" for key, value in settings.items()),
        f"| layers | {_cell([layer['name'] for layer in delta.layers])} |",
    ]
    if lora is not None:
        lines.append(
            f"| LoRA | {lora.format}, rank {lora.rank} of {lora.stored_rank}, relative truncation error "
            f"{lora.max_error:.3g} |"
        )
    if evaluation is not None:
        headline = to_plain(evaluation.headline)
        lines += [
            "",
            f"## Evaluation (`{evaluation.suite.name}`, scorer `{evaluation.scorer}`)",
            "",
            "| metric | value |",
            "|---|---|",
            *(f"| {key} | {_cell(value)} |" for key, value in headline.items()),
        ]
    lines += [
        "",
        "## License",
        "",
        "TODO: the base model's license applies to this derivative; state it here (and in `license:` above) "
        "before publishing.",
        "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)


def apply_with_card(
    model: str,
    delta_path: str | Path,
    out_dir: str | Path,
    evaluation: EvaluationResult | None = None,
    device: str | None = None,
    strength: float = 1.0,
) -> Path:
    """``locoedit apply``: the edited pipeline folder (the edit at ``strength``), with a model card as its README.md;
    ``evaluation`` (of this delta, see ``locoedit.evaluate.read_evaluation``) adds its figures to the card."""
    check_strength(strength)
    delta = EditDelta.load(delta_path)
    if evaluation is not None:
        check_evaluation(evaluation, delta)
    usage = "\n".join(
        [
            "```python",
            "from diffusers import DiffusionPipeline",
            "",
            f'pipe = DiffusionPipeline.from_pretrained("{Path(out_dir).name}")',
            "```",
        ]
    )
    card = model_card(delta, usage, evaluation, strength=strength)
    return apply_delta_to_folder(model, delta_path, out_dir, device, readme=card, strength=strength)


def export_with_card(
    delta_path: str | Path,
    format: str,
    out: str | Path,
    rank: int | None = None,
    evaluation: EvaluationResult | None = None,
    strength: float = 1.0,
) -> tuple[LoraExport, Path]:
    """``locoedit export``: the LoRA file and a model card as README.md in its folder. An existing README.md that
    is not a locoedit card is refused before anything is written."""
    from huggingface_hub import ModelCard

    out = Path(out)
    card_path = out.parent / "README.md"
    if card_path.is_file() and "locoedit" not in (ModelCard.load(card_path).data.tags or []):
        raise LocoeditError(
            f"{card_path} exists and is not a locoedit model card; write the LoRA into another folder (--out)"
        )
    delta = EditDelta.load(delta_path)
    check_exportable(delta, format, rank)
    if evaluation is not None:
        check_evaluation(evaluation, delta)
    exported = export_lora(delta, format, out, rank, strength)
    load = (
        f'pipe.load_lora_weights("{out.parent}", weight_name="{out.name}")  # diffusers, with peft installed'
        if format == "peft"
        else f'pipe.load_lora_weights("{out.parent}", weight_name="{out.name}")  # diffusers converts the kohya keys'
        "\n# A1111 / ComfyUI: copy the file into models/Lora and use it at strength 1"
    )
    usage = "\n".join(
        [
            "```python",
            "from diffusers import DiffusionPipeline",
            "",
            f'pipe = DiffusionPipeline.from_pretrained("{delta.base_model}")',
            load,
            "```",
        ]
    )
    write_text(card_path, model_card(delta, usage, evaluation, exported, strength))
    return exported, card_path
