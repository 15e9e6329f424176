"""What determines a LocoGen run: the :class:`LocalizationRequest`."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from locoedit.core.checks import check_guidance, check_positive_int
from locoedit.core.dtypes import check_dtype
from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord
from locoedit.core.seeds import check_seeds

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
class LocalizationRequest(JsonRecord):
    """Everything that determines a LocoGen run. Validates on construction; serialises to JSON (request.json)."""

    FORMAT = "locoedit.localization-request/2"  # 2 added screen; version 1 files read with screen None

    model: str
    prompts: tuple[str, ...]
    targets: tuple[str, ...]
    concept: str = ""  # scored text; empty = the words the targets drop from the prompts
    scorer: str | None = None  # None = the model's concept scorer (see locoedit.scoring.scorer_spec_for)
    window: int | str = 2  # an integer m, or "auto": the smallest m whose best window passes auto_threshold
    auto_threshold: float = 0.5  # fraction of the effect of routing *all* layers that a window must reach
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    steps: int | None = None  # None = the model's default
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    scheduler: str | None = None  # a diffusers scheduler class name; None = the pipeline's own
    mode: str = "batched"
    chunk: int = 8  # windows per denoising loop in batched mode
    dtype: str = "float32"
    device: str | None = None
    route_added_text: bool = False
    screen: Screen | None = None  # None: every window gets the full budget

    def __post_init__(self):
        for name in ("prompts", "targets"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        object.__setattr__(self, "seeds", check_seeds((self.seeds,) if isinstance(self.seeds, int) else self.seeds))
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
        if (
            isinstance(self.auto_threshold, bool)
            or not isinstance(self.auto_threshold, (int, float))
            or not (0 < self.auto_threshold <= 1)
        ):
            raise LocoeditError(f"auto_threshold {self.auto_threshold!r} must be in (0, 1]")
        if self.mode not in MODES:
            raise LocoeditError(f"mode {self.mode!r} is unknown; use 'exact' or 'batched'")
        check_positive_int("chunk", self.chunk)
        check_dtype(self.dtype)
        for name in ("steps", "height", "width"):
            check_positive_int(name, getattr(self, name))
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
