"""What a LocoGen run produces, as typed records: ``localization.json`` and one progress file per window."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord
from locoedit.localize.request import LocalizationRequest
from locoedit.models import GenerationSettings
from locoedit.models.layers import CrossAttentionLayer, LayerInfo

RESULT_FILE = "localization.json"


def window_key(layers) -> str:
    return f"window_{layers[0]:02d}-{layers[-1]:02d}"


@dataclass
class WindowResult(JsonRecord):
    """One window's effect; also the progress file a run writes when the window is done."""

    FORMAT = "locoedit.window/1"

    layers: list[int]
    effect: float  # mean over prompts x seeds
    effect_std: float
    effects: list[float]  # per (prompt, seed), prompt-major
    images: list[str]  # paths relative to the run folder

    @property
    def key(self) -> str:
        return window_key(self.layers)


@dataclass
class Screening:
    """The cheap stage of a screened sweep: every window ranked on fewer steps and seeds, no images kept."""

    steps: int
    seeds: list[int]
    top_k: int
    full_swap_effect: float  # routing every layer, at this budget
    windows: list[WindowResult]

    def best(self) -> WindowResult:
        return max(self.windows, key=lambda w: w.effect)

    def top(self) -> list[WindowResult]:
        """The ``top_k`` windows with the largest effect (ties: the earlier window), in window order."""
        ranked = sorted(self.windows, key=lambda w: -w.effect)[: self.top_k]
        return sorted(ranked, key=lambda w: w.layers)


@dataclass
class Sweep:
    window_size: int
    windows: list[WindowResult]  # at the full budget: every window, or only those a screening confirmed
    screening: Screening | None = None  # in a screened sweep, its cheap stage (every window)

    def best(self) -> WindowResult:
        return max(self.windows, key=lambda w: w.effect)


@dataclass(frozen=True)
class ChosenWindow:
    layers: list[int]
    names: list[str]  # module paths, to refuse the result on a model whose layers differ
    effect: float
    effect_std: float


@dataclass(frozen=True)
class ReferenceImages:
    original: list[str]  # the unrouted prompts' images, one per (prompt, seed)
    target: list[str]  # the unrouted targets' images (= routing every layer); none in a screened run


@dataclass
class LocalizationResult(JsonRecord):
    """A finished LocoGen run (``localization.json``). ``windows``, ``window_size`` and ``chosen`` repeat the last
    sweep's, for readers of the file."""

    # 2 added screening (Sweep.screening, request.screen); version 1 files read as sweeps without it
    FORMAT = "locoedit.localization/2"

    model: str
    request: LocalizationRequest
    settings: GenerationSettings
    concept: str
    seeds: list[int]
    layers: list[LayerInfo]
    window_size: int
    full_swap_effect: float  # the effect of routing every layer (= generating from the target); screened: at the
    # screening budget, since the full budget is spent on the prompts' own images and the top windows only
    windows: list[WindowResult]
    chosen: ChosenWindow
    sweeps: list[Sweep]
    images: ReferenceImages
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        request: LocalizationRequest,
        settings: GenerationSettings,
        layers: list[LayerInfo],
        full_swap_effect: float,
        sweeps: list[Sweep],
        images: ReferenceImages,
        versions: dict[str, str],
        timings: dict[str, float],
    ) -> LocalizationResult:
        final = sweeps[-1]
        best = final.best()
        chosen = ChosenWindow(best.layers, [layers[i].name for i in best.layers], best.effect, best.effect_std)
        return cls(
            request.model,
            request,
            settings,
            request.concept,
            list(request.seeds),
            layers,
            final.window_size,
            full_swap_effect,
            final.windows,
            chosen,
            sweeps,
            images,
            versions,
            timings,
        )

    @classmethod
    def load(cls, folder_or_file: str | Path) -> LocalizationResult:
        """The result of a finished ``locoedit localize`` run, from its folder or its ``localization.json``."""
        path = Path(folder_or_file)
        file = path / RESULT_FILE if path.is_dir() else path
        if not file.is_file():
            raise LocoeditError(
                f"{folder_or_file} holds no {RESULT_FILE}; give the folder of a finished `locoedit localize` run"
            )
        return cls.read(file)

    def layers_for(self, table: list[CrossAttentionLayer], where: str) -> list[int]:
        """The chosen layer indices, checked against ``table``: refuses a run made on a model whose layers differ."""
        for index, name in zip(self.chosen.layers, self.chosen.names):
            if index >= len(table) or table[index].name != name:
                raise LocoeditError(
                    f"{where} chose layer {index} ({name}) but this model's layer {index} is "
                    f"{table[index].name if index < len(table) else 'missing'}: the run was for another model"
                )
        return list(self.chosen.layers)
