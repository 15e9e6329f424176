"""What a causal-tracing run produces: ``trace.json``, as typed records."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path

from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord
from locoedit.models import GenerationSettings
from locoedit.models.layers import LayerInfo
from locoedit.trace.request import TraceRequest

RESULT_FILE = "trace.json"
WEAK_GAP = 0.1  # a gap under this share of the clean score is noted: effects then rest on a few images
MIN_GAP = 1e-9  # below this the corruption changed nothing measurable: effects are undefined, not divided by ~0


@dataclass(frozen=True)
class SiteEffect:
    name: str  # pipeline path
    part: str  # "denoiser" or "text_encoder"
    kind: str
    index: int  # execution order within its part
    effect: float | None  # None when the gap is zero
    effect_std: float | None
    effects: list[float] = field(default_factory=list)  # per (prompt, seed), prompt-major


@dataclass(frozen=True)
class TraceImages:
    clean: list[str]
    corrupted: list[str]
    restored: dict[str, list[str]] = field(default_factory=dict)  # the best site of each part -> its images


@dataclass
class TraceResult(JsonRecord):
    """``trace.json``."""

    FORMAT = "locoedit.trace/1"

    model: str
    request: TraceRequest
    settings: GenerationSettings
    concept: str
    seeds: list[int]
    noise_sigma: dict[str, float]  # per text encoder, the absolute noise scale
    clean_score: float
    corrupted_score: float
    gap: float  # clean_score - corrupted_score
    sites: list[SiteEffect]
    images: TraceImages
    layers: list[LayerInfo]  # the cross-attention layers (LocoGen's numbering), to line traces up with LocoGen
    note: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def best(self, part: str) -> SiteEffect | None:
        measured = [s for s in self.sites if s.part == part and s.effect is not None]
        return max(measured, key=lambda s: typing.cast(float, s.effect)) if measured else None  # measured: not None

    @classmethod
    def load(cls, folder_or_file: str | Path) -> TraceResult:
        path = Path(folder_or_file)
        file = path / RESULT_FILE if path.is_dir() else path
        if not file.is_file():
            raise LocoeditError(f"{folder_or_file} holds no {RESULT_FILE}; give the folder of a `locoedit trace` run")
        return cls.read(file)
