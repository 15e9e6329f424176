"""What ``apply`` and ``export`` are asked to do (import no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from locoedit.core.errors import LocoeditError
from locoedit.core.params import Request, device_setting, model_setting, positive_int, setting, unit_interval

LORA_FORMATS = ("kohya", "peft")
DELTA_HELP = "Delta file written by `locoedit edit` or `locoedit neurons`."
EVALUATION_HELP = "A `locoedit evaluate` folder of this edit: its headline goes into the model card."
STRENGTH_HELP = "How much of the edit to write: 0 = the original model, 1 = the edit."


def _lora_format(name: str, value: str) -> str:
    if value not in LORA_FORMATS:
        raise LocoeditError(f"unknown LoRA format {value!r}; use one of {', '.join(LORA_FORMATS)} (--format)")
    return value


def _delta_file(name: str, path: str) -> str:
    if not path:
        raise LocoeditError("give the delta file (.safetensors) written by `locoedit edit` or `locoedit neurons`")
    return path


@dataclass(frozen=True)
class ApplyRequest(Request):
    """A delta written into its model, saved as a full diffusers pipeline folder with a model card."""

    model: str = model_setting()
    delta: str = setting("", DELTA_HELP, check=_delta_file, positional=True)
    strength: float = setting(1.0, STRENGTH_HELP, check=unit_interval)
    evaluation: str | None = setting(None, EVALUATION_HELP)
    device: str | None = device_setting("cpu, cuda, cuda:1, ... (default: the CPU).")


@dataclass(frozen=True)
class ExportRequest(Request):
    """A delta as a LoRA file (no model needed), with a model card beside it."""

    delta: str = setting("", DELTA_HELP, check=_delta_file, positional=True)
    format: str = setting(
        "kohya",
        "kohya (A1111, ComfyUI; diffusers converts it) or peft (diffusers' own layout).",
        check=_lora_format,
        choices=LORA_FORMATS,
    )
    rank: int | None = setting(
        None, "Keep the R largest singular values of each update; prints the error.", check=positive_int
    )
    strength: float = setting(1.0, STRENGTH_HELP, check=unit_interval)
    evaluation: str | None = setting(None, EVALUATION_HELP)
