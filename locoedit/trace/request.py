"""What determines a causal-tracing run: the :class:`TraceRequest`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from locoedit.core.checks import check_guidance, check_positive_int
from locoedit.core.dtypes import check_dtype
from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord
from locoedit.core.seeds import check_seeds

PARTS = ("denoiser", "text_encoder")
RESTORED_TOKENS = ("last", "all")


@dataclass(frozen=True)
class TraceRequest(JsonRecord):
    """Causal tracing (Meng et al.'s ROME method, as the paper's authors applied it to text-to-image models):
    corrupt the concept's input token embeddings with Gaussian noise, then restore one site's clean state at a time
    and measure how much of the concept comes back. Validates on construction; serialises to JSON."""

    FORMAT = "locoedit.trace-request/1"

    model: str
    prompts: tuple[str, ...]
    concept: str  # the words to corrupt; also the text the scorer scores
    scorer: str | None = None  # None = the model's concept scorer; "pixel" = distance to the clean image
    noise: float = 3.0  # sigma of the corruption, in standard deviations of the encoder's token embeddings
    noise_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    parts: tuple[str, ...] = PARTS  # which sites to restore: the denoiser's blocks, the text encoders' layers
    sites: tuple[str, ...] = ()  # restrict to these site names (pipeline paths); () = every site of the parts
    restore_tokens: str = "last"  # text-encoder sites: restore the concept's last token, or all its tokens
    steps: int | None = None  # None = the model's default
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    chunk: int = 8  # sites per denoising loop
    dtype: str = "float32"
    device: str | None = None

    def __post_init__(self):
        for name in ("prompts", "parts", "sites"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        object.__setattr__(self, "seeds", check_seeds((self.seeds,) if isinstance(self.seeds, int) else self.seeds))
        if not self.prompts or any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise LocoeditError("give at least one non-empty --prompt that mentions the concept")
        if not isinstance(self.concept, str) or not self.concept.strip():
            raise LocoeditError("give the --concept to corrupt: words that appear in every prompt")
        noise = self.noise
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
            raise LocoeditError(
                f"noise must be a finite number >= 0 (standard deviations), got {noise!r}; e.g. --noise 3"
            )
        check_seeds((self.noise_seed,), "noise_seed")
        if not self.parts or any(part not in PARTS for part in self.parts):
            raise LocoeditError(f"parts {list(self.parts)} must be some of {', '.join(PARTS)}")
        if self.restore_tokens not in RESTORED_TOKENS:
            raise LocoeditError(f"restore_tokens {self.restore_tokens!r} is unknown; use 'last' or 'all'")
        for name in ("steps", "height", "width", "chunk"):
            check_positive_int(name, getattr(self, name))
        check_guidance(self.guidance)
        check_dtype(self.dtype)
