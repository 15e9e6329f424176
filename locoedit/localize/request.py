"""What determines a LocoGen run: the :class:`LocalizationRequest`."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from locoedit.core.checks import check_guidance, check_positive_int
from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord
from locoedit.core.params import (
    Request,
    dtype_setting,
    fraction,
    model_setting,
    one_of,
    positive_int,
    seeds_setting,
    setting,
)

MODES = ("exact", "batched")


def infer_concept(prompt: str, target: str) -> str:
    """The words of ``prompt`` that ``target`` drops, e.g. ("a house in the style of Van Gogh", "a house")."""
    words, kept = prompt.split(), target.split()
    matcher = difflib.SequenceMatcher(a=words, b=kept, autojunk=False)
    dropped = [w for tag, i1, i2, _, _ in matcher.get_opcodes() if tag in ("delete", "replace") for w in words[i1:i2]]
    return " ".join(dropped)


def parse_window(text: str) -> int | str:
    """A window size as typed (``--window``): an integer m, or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise LocoeditError(f"window {text!r} is neither an integer nor 'auto'") from None


@dataclass(frozen=True)
class Screen:
    """Screening (``--screen STEPS:SEEDS:TOPK``): rank every window with ``steps`` denoising steps on the first
    ``seeds`` seeds, then spend the full budget only on the ``top_k`` best."""

    steps: int
    seeds: int
    top_k: int

    def __post_init__(self):
        for name in ("steps", "seeds", "top_k"):
            check_positive_int(f"screen {name}", getattr(self, name), "--screen STEPS:SEEDS:TOPK")

    @classmethod
    def parse(cls, text: str) -> Screen:
        """``STEPS:SEEDS:TOPK``, e.g. ``2:1:1``."""
        parts = text.split(":")
        if len(parts) != 3 or not all(part.strip().isdigit() for part in parts):
            raise LocoeditError(f"screen {text!r} is not STEPS:SEEDS:TOPK (three positive integers), e.g. 2:1:1")
        return cls(*(int(part) for part in parts))

    def __str__(self) -> str:
        return f"{self.steps}:{self.seeds}:{self.top_k}"


@dataclass(frozen=True)
class LocalizationRequest(Request, JsonRecord):
    """Everything that determines a LocoGen run. Validates on construction; serialises to JSON (request.json)."""

    FORMAT = "locoedit.localization-request/2"  # 2 added screen; version 1 files read with screen None

    model: str = model_setting()
    prompts: tuple[str, ...] = setting((), "Original prompt (repeatable).", flag="--prompt", short="-p")
    targets: tuple[str, ...] = setting(
        (), "The prompt with the concept removed (one per --prompt).", flag="--target", short="-t"
    )
    concept: str = setting("", "Text to score; default: the words the target drops.")
    adopt: str = setting(
        "",
        "Also score how much this text appears (e.g. the target's colour): a window's effect is then the concept's "
        "loss plus this text's gain (default: off).",
    )
    scorer: str | None = setting(
        None,
        "pixel, toyworld or clip:ID_OR_FOLDER (default: the model's concept scorer: the probe for the toy world, "
        "the paper's CLIP otherwise).",
    )
    window: int | str = setting(
        2,
        "Window size m, or 'auto': the smallest m whose best window reaches --threshold.",
        parse=parse_window,
        show=str,
    )
    auto_threshold: float = setting(
        0.5,
        "For --window auto: fraction of the all-layer effect a window must reach.",
        flag="--threshold",
        check=fraction,
    )
    seeds: tuple[int, ...] = seeds_setting((0, 1, 2, 3), "Seeds, e.g. 0,1,2,3 or 0-15.")
    steps: int | None = setting(None, "Denoising steps (default: the model's).", check=positive_int)
    guidance: float | None = setting(None, "Classifier-free guidance scale.")
    height: int | None = setting(None, "Image height and width in pixels.", flag="--size", check=positive_int)
    width: int | None = setting(None, "Image width (default: the height).", check=positive_int, front_end=False)
    scheduler: str | None = setting(None, "A diffusers scheduler class, e.g. DDIMScheduler.")
    mode: str = setting(
        "batched", "exact (one loop per window, as the paper) or batched.", check=one_of(*MODES), choices=MODES
    )
    chunk: int = setting(8, "Windows per denoising loop in batched mode.", check=positive_int)
    dtype: str = dtype_setting()
    device: str | None = setting(
        None, "cpu, cuda, cuda:1, ... (default: cuda if available; under a launcher, each process's own)."
    )
    route_added_text: bool = setting(False, "Also route SD-XL pooled / IF time-embedding text.")
    screen: Screen | None = setting(
        None,
        "STEPS:SEEDS:TOPK: rank every window on fewer steps and seeds, then give only the top k the full budget "
        "(default: off).",
        parse=Screen.parse,
        show=str,
    )

    def validate(self) -> None:
        if self.width is None and self.height is not None:
            object.__setattr__(self, "width", self.height)  # --size gives both
        if not self.prompts:
            raise LocoeditError("prompts is empty; give at least one original prompt (--prompt)")
        if len(self.prompts) != len(self.targets):
            raise LocoeditError(
                f"got {len(self.prompts)} prompts and {len(self.targets)} targets; give one target per prompt, "
                "in the same order"
            )
        for prompt, target in zip(self.prompts, self.targets):
            if not isinstance(prompt, str) or not isinstance(target, str) or not prompt.strip() or not target.strip():
                raise LocoeditError("a prompt or target is empty; every --prompt and --target needs text")
            if prompt.strip() == target.strip():
                raise LocoeditError(
                    f"target {target!r} equals its prompt; the target must be the prompt with the concept removed"
                )
        if not self.concept:
            concepts = {infer_concept(p, t) for p, t in zip(self.prompts, self.targets)}
            if len(concepts) != 1 or not next(iter(concepts)):
                raise LocoeditError(
                    f"cannot infer one concept from the prompts and targets (got {sorted(concepts)}); pass --concept"
                )
            object.__setattr__(self, "concept", concepts.pop())
        if self.window != "auto" and (
            isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1
        ):
            raise LocoeditError(f"window {self.window!r} is invalid; give an integer m >= 1 or 'auto'")
        check_guidance(self.guidance)
        if self.screen is not None:
            if not isinstance(self.screen, Screen):
                raise LocoeditError(f"screen must be a Screen(steps, seeds, top_k), got {self.screen!r}")
            if self.screen.seeds > len(self.seeds):
                raise LocoeditError(
                    f"screen ranks windows on {self.screen.seeds} seeds but the request has only {len(self.seeds)}; "
                    f"give at most {len(self.seeds)} screening seeds"
                )
            if self.steps is not None and self.screen.steps >= self.steps:
                raise LocoeditError(
                    f"screen steps {self.screen.steps} are not fewer than the full {self.steps} steps; "
                    "screening must be cheaper than the sweep it screens"
                )
