"""What an evaluation is asked to do: the :class:`EvaluationRequest` (imports no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from locoedit.core.checks import check_guidance
from locoedit.core.errors import LocoeditError
from locoedit.core.params import (
    Request,
    device_setting,
    dtype_setting,
    model_setting,
    positive_int,
    seeds_setting,
    setting,
)
from locoedit.core.seeds import check_seeds


def _suite_seeds(name: str, seeds):
    return seeds if seeds == () else check_seeds(seeds, name)  # () = the suite's seeds


@dataclass(frozen=True)
class EvaluationRequest(Request):
    """The CLI's ``evaluate``: model, delta file, suite, and overrides. Validates on construction."""

    model: str = model_setting()
    edit: str = setting("", "Delta file written by `locoedit edit` or `locoedit neurons`.")
    suite: str | None = setting(
        None,
        "A shipped suite name (e.g. toyworld-style-kandinsky) or a suite .json file; default: the shipped suite for "
        "the delta's concept.",
    )
    scorer: str | None = setting(
        None, "toyworld or clip:ID_OR_FOLDER (default: the suite's, else the model's concept scorer)."
    )
    localization: str | None = setting(
        None, "A `locoedit localize` run folder: adds its per-layer effect curve to the report."
    )
    seeds: tuple[int, ...] = seeds_setting((), "Override the suite's seeds, e.g. 0-7.", check=_suite_seeds)
    steps: int | None = setting(None, "Denoising steps (default: the suite's, else the model's).", check=positive_int)
    guidance: float | None = setting(None, "Classifier-free guidance scale.")
    size: int | None = setting(None, "Image height and width in pixels.", check=positive_int)
    batch_size: int = setting(16, "Images per denoising loop.", check=positive_int)
    dtype: str | None = dtype_setting(None, "float32, float16 or bfloat16 (default: the delta's).")
    device: str | None = device_setting()

    def validate(self) -> None:
        if not self.edit:
            raise LocoeditError("give the delta file to evaluate: --edit FILE (written by `locoedit edit`)")
        check_guidance(self.guidance)
