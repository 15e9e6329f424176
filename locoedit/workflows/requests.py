"""What the workflows are asked to do: :class:`GenerationRequest` and :class:`TuneRequest` (import no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from locoedit.core.checks import check_guidance
from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord
from locoedit.core.params import (
    Request,
    device_setting,
    dtype_setting,
    model_setting,
    one_of,
    positive_int,
    seeds_setting,
    setting,
)
from locoedit.edit.request import TOKEN_CHOICES, EditRequest, check_concepts, check_window
from locoedit.edit.templates import KINDS
from locoedit.localize.request import parse_window

MAX_VARIANTS = 200


@dataclass(frozen=True)
class GenerationRequest(Request, JsonRecord):
    """Images for prompts and seeds with any supported model."""

    FORMAT = "locoedit.generation-request/1"

    model: str = model_setting()
    prompts: tuple[str, ...] = setting((), "Prompt (repeatable).", flag="--prompt", short="-p")
    seeds: tuple[int, ...] = seeds_setting((0, 1, 2, 3), "Seeds, e.g. 0-15.")
    steps: int | None = setting(None, "Denoising steps (default: the model's).", check=positive_int)
    guidance: float | None = setting(None, "Classifier-free guidance scale.")
    size: int | None = setting(None, "Image height and width in pixels.", check=positive_int)
    dtype: str = dtype_setting()
    device: str | None = device_setting()

    def validate(self) -> None:
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise LocoeditError("give at least one non-empty --prompt")
        check_guidance(self.guidance)


def _grid(name: str, values):
    if not values:
        raise LocoeditError(f"{name} is empty; the grid needs at least one value of each setting")
    return values


def _tokens(name: str, tokens):
    unknown = [t for t in _grid(name, tokens) if t not in TOKEN_CHOICES]
    if unknown:
        raise LocoeditError(f"tokens {unknown} are unknown; use {', '.join(TOKEN_CHOICES)}")
    return tokens


@dataclass(frozen=True)
class TuneRequest(Request, JsonRecord):
    """A grid of LocoEdit settings for one edit, and the suite that judges them. Validates on construction."""

    FORMAT = "locoedit.tune-request/1"

    model: str = model_setting()
    concepts: tuple[str, ...] = setting(
        (), "Concept text to edit (repeat for several).", flag="--concept", check=check_concepts
    )
    targets: tuple[str, ...] = setting((), "What the concept should become (one, or one per concept).", flag="--target")
    kind: str = setting(
        "object", "style, object or fact: picks the shipped prompt templates.", check=one_of(*KINDS), choices=KINDS
    )
    suite: str | None = setting(None, "Suite with a validation split (default: the shipped one for the concept).")
    windows: int = setting(3, "How many of LocoGen's best windows to try.", check=positive_int)
    window: int | str = setting(
        "auto", "LocoGen window size, or 'auto'.", check=check_window, parse=parse_window, show=str
    )
    tokens: tuple[str, ...] = setting(
        ("from-concept", "last-subject"),
        "Token rows to try (repeat).",
        flag="--token",
        check=_tokens,
        choices=TOKEN_CHOICES,
    )
    preserve_neighbours: tuple[float, ...] = setting((3.0, 30.0), "Neighbour weights to try (repeat).", check=_grid)
    preserve_general: tuple[float, ...] = setting((3.0, 30.0), "General-corpus weights to try (repeat).", check=_grid)
    lambdas: tuple[float, ...] = setting(
        (0.1, 1.0), "Lambdas to try, keys and values alike (repeat).", flag="--lambda", check=_grid
    )
    localize_seeds: tuple[int, ...] = seeds_setting((0, 1, 2, 3), "LocoGen seeds, e.g. 0-3.")
    dtype: str = dtype_setting()
    device: str | None = device_setting()

    def validate(self) -> None:
        if self.variants > MAX_VARIANTS:
            raise LocoeditError(
                f"the grid has {self.variants} variants, more than {MAX_VARIANTS}; give fewer values "
                "per setting (each variant is a full evaluation of the validation split)"
            )
        self.edit_request(
            "auto", self.tokens[0], self.preserve_neighbours[0], self.preserve_general[0], self.lambdas[0]
        )  # the edit's own checks (concepts, targets, kind, numbers)

    @property
    def variants(self) -> int:
        return (
            self.windows
            * len(self.tokens)
            * len(self.preserve_neighbours)
            * len(self.preserve_general)
            * len(self.lambdas)
        )

    def edit_request(self, layers, token: str, neighbours: float, general: float, lam: float) -> EditRequest:
        return EditRequest(
            model=self.model,
            concepts=self.concepts,
            targets=self.targets,
            kind=self.kind,
            layers=layers,
            token=token,
            preserve_neighbours=neighbours,
            preserve_general=general,
            lambda_key=lam,
            lambda_value=lam,
            auto_window=self.window,
            auto_seeds=self.localize_seeds,
            dtype=self.dtype,
            device=self.device,
        )
