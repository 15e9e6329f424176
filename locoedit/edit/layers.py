"""Which layers an edit changes: indices, a LocoGen run folder, or ``auto`` (LocoGen on the edit's own prompts)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from locoedit.core.errors import LocoeditError
from locoedit.core.progress import ProgressCallback
from locoedit.edit.request import EditRequestCore
from locoedit.localize import LocalizationRequest, LocalizationResult, localize
from locoedit.localize.result import RESULT_FILE
from locoedit.models import Adapter
from locoedit.models.layers import CrossAttentionLayer
from locoedit.scoring import Scorer

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def resolve_layers(adapter: Adapter, request: EditRequestCore) -> list[CrossAttentionLayer]:
    """The layers ``request.layers`` names: indices or a LocoGen run folder. ("auto" is
    :meth:`~locoedit.edit.methods.EditMethod.compute_auto`'s: LocoGen on the edit's own prompt pairs, then the
    edit checked and widened.)"""
    spec = request.layers
    if spec == "auto":
        raise ValueError("layers='auto' is resolved by EditMethod.compute_auto, which localizes and widens")
    if isinstance(spec, (str, Path)):
        return layers_at(
            adapter, LocalizationResult.load(spec).layers_for(adapter.layers, str(Path(spec) / RESULT_FILE))
        )
    return layers_at(adapter, list(spec))


def layers_at(adapter: Adapter, indices: list[int], auto: bool = False) -> list[CrossAttentionLayer]:
    """The layers of ``indices``, in execution order; out-of-range indices and single-stream blocks refused, or,
    when LocoGen chose them (``auto``), the single-stream blocks left out."""
    table = adapter.layers
    bad = [i for i in indices if not 0 <= i < len(table)]
    if bad:
        raise LocoeditError(
            f"layer indices {bad} are out of range: this model has {len(table)} text-reading layers "
            f"(0..{len(table) - 1}; `locoedit layers MODEL` lists them)"
        )
    single = [table[i] for i in sorted(indices) if table[i].stream == "single"]
    if single and auto:  # LocoGen may choose them; the edit keeps the dual-stream blocks of its windows
        logger.info("auto layers: single-stream blocks %s left out", [layer.index for layer in single])
        indices = [i for i in indices if table[i].stream != "single"]
        if not indices:
            raise LocoeditError(
                "LocoGen chose only single-stream blocks, which locoedit cannot edit without changing the image "
                "rows; give --layers with the dual-stream blocks to edit (`locoedit layers MODEL` lists them)"
            )
    elif single:
        raise LocoeditError(
            f"layer {single[0].index} ({single[0].block}) is a single-stream block: its to_k/to_v project the image "
            "rows too, so an edit there would change every image; edit dual-stream blocks (`locoedit layers MODEL` "
            "marks them)"
        )
    return [table[i] for i in sorted(indices)]


# A fact's attribute runs stop at a lower share than the concept's own run: their windows are unioned, so each layer
# one of them adds widens an edit that already spans several windows, and reaches the fact's look said in words. The
# ocean -> "a yellow dotted circle" at 0.97: its shape's window 2-4 -> 2-5, look-alikes kept 60% -> 12% (adoption
# 40% -> 73%).
ATTRIBUTE_THRESHOLD = 0.95


def auto_localizations(adapter: Adapter, request: EditRequestCore, scorer: Scorer) -> list[LocalizationRequest]:
    """The LocoGen runs of ``layers="auto"``: one on the edit's own prompt pairs, scored on its concepts. A concept
    that stands for several attributes the scorer reads (a toy-world fact: a colour, a shape and a texture) is also localized
    attribute by attribute, for each one its target changes: on that concept's pairs, scored on the concept's value
    going plus the target's appearing; the union of its windows is edited. The window chosen on the fact as a whole
    removes it by changing the attribute read earliest, and the target's other attributes never appear ("the sun" ->
    "a red circle": layers 2-3, still yellow); the colour's window alone (6-7) does not hold the fact either: the
    closed form there turned 2 of 16 suns red, the union 15."""
    pairs = request.pairs()
    runs = []
    for concept, target in zip(request.concepts, request.all_targets):
        concept = concept.strip()
        own = replace(request.localization([pair for pair in pairs if pair.concept == concept]), concept=concept)
        changed = scorer.changed_attributes(concept, target.strip())
        runs.append(own)
        if any(value != concept for value, _ in changed):
            runs += [
                replace(own, concept=value, adopt=wanted, auto_threshold=min(own.auto_threshold, ATTRIBUTE_THRESHOLD))
                for value, wanted in changed
            ]
    if not any(run.adopt for run in runs):
        runs = [request.localization(pairs)]  # nothing split: one LocoGen, scored on any of the concepts
    return runs


def auto_localize(
    adapter: Adapter,
    request: EditRequestCore,
    scorer: Scorer,
    progress: ProgressCallback | None = None,
    out: Path | None = None,
) -> list[tuple[str, LocalizationResult]]:
    """Each of :func:`auto_localizations`' runs localized, with its folder name (``localize``, then
    ``localize-VALUE`` per attribute a fact's target changes); with ``out``, each run is written to ``out/NAME``."""
    found = []
    for run in auto_localizations(adapter, request, scorer):
        folder = "localize" + (f"-{run.concept.replace(' ', '-')}" if run.adopt else "")
        result = localize(
            run, out=None if out is None else out / folder, adapter=adapter, scorer=scorer, progress=progress
        )
        logger.info(
            "LocoGen on %r%s chose layers %s", run.concept, f" -> {run.adopt!r}" * bool(run.adopt), result.chosen.layers
        )
        found.append((folder, result))
    return found


def union_of_windows(results: list[tuple[str, LocalizationResult]]) -> list[int]:
    """The layers ``layers="auto"`` edits: every layer a window of :func:`auto_localize` chose."""
    return sorted({layer for _, result in results for layer in result.chosen.layers})


# Widen only while the edit does clearly less than the routing. The toy world's fact "the sun" -> "a red circle" on
# LocoGen's 6-7: 0.63 of the routing's effect on the sun, 0.22 on its colour (widened to 4-9: 100% efficacy); its
# objects come out at 0.93-0.96, and widening those (square 2-4 -> 1-5, dotted 2 -> 1-3) cost look-alikes kept
# (88% -> 69%, 77% -> 71%) for 4 points of efficacy or none.
WIDEN_BELOW = 0.8
# A wider edit is refused when it takes this much more of the concept from its mined look-alikes than the narrower
# one (:meth:`EditEffect.leak`): the ocean widened 2-4 -> 1-5 kept 2% of its look-alikes, against 60%.
LEAK_MARGIN = 0.2


def widened(adapter: Adapter, indices: list[int]) -> list[int]:
    """``indices`` and the layer on either side of each: one step of :class:`EditEffect`'s widening."""
    grown = {j for i in indices for j in (i - 1, i, i + 1) if 0 <= j < len(adapter.layers)}
    return sorted(j for j in grown if adapter.layers[j].stream != "single")


class EditEffect:
    """What an edit does on each LocoGen run's own prompts and seeds, as a share of the effect of routing the run's
    chosen window: LocoGen says where the concept is read; this says whether the closed form there reproduces the
    routing. The unedited images are generated once and kept for every edit checked."""

    def __init__(self, adapter: Adapter, localizations: list[tuple[str, LocalizationResult]], scorer: Scorer):
        self.adapter, self.scorer = adapter, scorer
        self.results = [result for _, result in localizations]
        self._unedited: dict[int, torch.Tensor] = {}
        self._looks: tuple[list[str], torch.Tensor] | None = None  # the mined prompts and their unedited images

    def _generate(self, run: LocalizationRequest, prompts=None) -> torch.Tensor:  # [prompts x seeds, 3, H, W]
        """``prompts`` (default: the run's) with the run's seeds and settings."""
        prompts = list(run.prompts if prompts is None else prompts)
        settings = self.adapter.settings(run.steps, run.guidance, run.height, run.width)
        rows = [(p, seed) for p in range(len(prompts)) for seed in run.seeds]  # LocoGen's order and batch
        encoded = self.adapter.encode(prompts).take([p for p, _ in rows])
        return self.adapter.generate(encoded, [seed for _, seed in rows], settings)

    def leak(self, delta, prompts: list[str]) -> float:
        """How much of the concept the edit takes from ``prompts``, the prompts mined as entangled with it (its
        look-alikes: they show the concept without naming it), scored as LocoGen scores the concept, on the first
        run's seeds; 0 without prompts."""
        if not prompts:
            return 0.0
        run = self.results[0].request
        if self._looks is None or self._looks[0] != prompts:
            self._looks = (prompts, self._generate(run, prompts))
        with delta.installed(self.adapter):
            edited = self._generate(run, prompts)
        return float(self.scorer.effect(self._looks[1], edited, run.concept).mean())

    def shares(self, delta) -> list[float]:
        """Per run: the edit's mean effect over the window's (1: the edit does what routing the window does)."""
        found = []
        for number, result in enumerate(self.results):
            run = result.request
            if number not in self._unedited:
                self._unedited[number] = self._generate(run)
            with delta.installed(self.adapter):
                edited = self._generate(run)
            effect = self.scorer.effect(self._unedited[number], edited, run.concept)
            if run.adopt:  # as LocoGen scores it: the concept's value gone plus the target's appearing
                effect = effect + self.scorer.effect(edited, self._unedited[number], run.adopt)
            window = result.chosen.effect
            found.append(float(effect.mean()) / window if window > 0 else 1.0)
        return found
