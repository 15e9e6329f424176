"""What determines a causal-tracing run: the :class:`TraceRequest`."""

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
    non_negative,
    one_of,
    positive_int,
    seeds_setting,
    setting,
)
from locoedit.core.seeds import check_seeds

PARTS = ("denoiser", "text_encoder")
RESTORED_TOKENS = ("last", "all")


@dataclass(frozen=True)
class TraceRequest(Request, JsonRecord):
    """Causal tracing (Meng et al.'s ROME method, as the paper's authors applied it to text-to-image models):
    corrupt the concept's input token embeddings with Gaussian noise, then restore one site's clean state at a time
    and measure how much of the concept comes back. Validates on construction; serialises to JSON."""

    FORMAT = "locoedit.trace-request/1"

    model: str = model_setting()
    prompts: tuple[str, ...] = setting((), "Prompt that shows the concept (repeatable).", flag="--prompt", short="-p")
    concept: str = setting("", "Words of the prompts to corrupt; also the text the scorer scores.")
    scorer: str | None = setting(
        None,
        "pixel (distance to the clean image), toyworld or clip:ID_OR_FOLDER (default: the model's concept scorer).",
    )
    noise: float = setting(3.0, "Noise sigma in standard deviations of the token embeddings.", check=non_negative)
    noise_seed: int = setting(
        0,
        "Seed of the corruption noise (the same draw for every row and run).",
        check=lambda name, value: check_seeds((value,), name)[0],
    )
    seeds: tuple[int, ...] = seeds_setting((0, 1, 2, 3), "Seeds, e.g. 0,1,2,3 or 0-15.")
    parts: tuple[str, ...] = setting(PARTS, "denoiser and/or text_encoder (repeat).", flag="--part", choices=PARTS)
    sites: tuple[str, ...] = setting((), "Only these sites (pipeline paths; see `locoedit sites`).", flag="--site")
    restore_tokens: str = setting(
        "last",
        "Text-encoder sites: restore the concept's last token, or all.",
        check=one_of(*RESTORED_TOKENS),
        choices=RESTORED_TOKENS,
    )
    steps: int | None = setting(None, "Denoising steps (default: the model's).", check=positive_int)
    guidance: float | None = setting(None, "Classifier-free guidance scale.")
    height: int | None = setting(None, "Image height and width in pixels.", flag="--size", check=positive_int)
    width: int | None = setting(None, "Image width (default: the height).", check=positive_int, front_end=False)
    chunk: int = setting(8, "Sites per denoising loop.", check=positive_int)
    dtype: str = dtype_setting()
    device: str | None = device_setting()

    def validate(self) -> None:
        if self.width is None and self.height is not None:
            object.__setattr__(self, "width", self.height)  # --size gives both
        if not self.prompts or any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise LocoeditError("give at least one non-empty --prompt that mentions the concept")
        if not isinstance(self.concept, str) or not self.concept.strip():
            raise LocoeditError("give the --concept to corrupt: words that appear in every prompt")
        if not self.parts or any(part not in PARTS for part in self.parts):
            raise LocoeditError(f"parts {list(self.parts)} must be some of {', '.join(PARTS)}")
        check_guidance(self.guidance)
