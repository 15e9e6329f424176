"""Which layers an edit changes: indices, a LocoGen run folder, or ``auto`` (LocoGen on the edit's own prompts)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from locoedit.core.errors import LocoeditError
from locoedit.core.progress import ProgressCallback
from locoedit.core.seeds import check_seeds
from locoedit.edit.rows import PromptPair
from locoedit.localize import LocalizationRequest, LocalizationResult, localize
from locoedit.localize.result import RESULT_FILE
from locoedit.models import Adapter
from locoedit.models.layers import CrossAttentionLayer

logger = logging.getLogger(__name__)


def parse_layers(text: str) -> tuple[int, ...] | str:
    """Layers as typed (``--layers``): ``auto``, comma-separated indices ``8,9``, or a LocoGen run folder."""
    text = text.strip()
    if text == "auto":
        return "auto"
    if re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
        return tuple(int(part) for part in text.split(","))
    return text


def check_layer_spec(layers) -> tuple[int, ...] | str:
    """``layers`` as an edit request holds it: "auto", a LocoGen run folder, or distinct non-negative indices."""
    if isinstance(layers, (str, Path)):
        layers = str(layers)
        if layers != "auto" and not (Path(layers) / RESULT_FILE).is_file():
            raise LocoeditError(
                f"layers {layers!r} is neither 'auto', nor indices like 8,9, nor a LocoGen run folder with "
                f"{RESULT_FILE}; run `locoedit localize` first or give the indices"
            )
        return layers
    layers = tuple(layers)
    if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
        raise LocoeditError(f"layers {layers!r} must be non-empty non-negative indices, e.g. --layers 8,9")
    if len(set(layers)) != len(layers):
        raise LocoeditError(f"layers {list(layers)} repeats an index; give each layer once")
    return layers


def check_auto_settings(window, threshold, seeds) -> tuple[int, ...]:
    """Validate the LocoGen settings of ``layers="auto"``; returns the seeds as a tuple."""
    if window != "auto" and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise LocoeditError(f"auto_window {window!r} must be an integer >= 1 or 'auto' (--window)")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise LocoeditError(f"auto_threshold {threshold!r} must be in (0, 1] (--threshold)")
    return check_seeds(seeds, "auto_seeds")


def auto_localization(request, pairs: list[PromptPair]) -> LocalizationRequest:
    """The LocoGen request of an edit request's ``layers="auto"``: its own prompt pairs, scored on its concepts.
    A pair whose target prompt is empty (removing the concept from the template ``{c}``) has nothing to route to,
    so it is left out of the localization (it still counts for the edit)."""
    routable = [pair for pair in pairs if pair.target_prompt.strip()]
    skipped = len(pairs) - len(routable)
    if skipped:
        logger.info("LocoGen leaves out %d prompt(s) whose target is empty", skipped)
    if not routable:
        raise LocoeditError(
            "every prompt of the edit becomes empty without the concept, so LocoGen has nothing to "
            "route to; give --prompt templates with words besides {c}, or --layers"
        )
    pairs = routable
    return LocalizationRequest(
        model=request.model,
        prompts=tuple(p.prompt for p in pairs),
        targets=tuple(p.target_prompt for p in pairs),
        concept=", ".join(request.concepts),
        scorer=request.auto_scorer,
        window=request.auto_window,
        auto_threshold=request.auto_threshold,
        seeds=request.auto_seeds,
        steps=request.auto_steps,
        dtype=request.dtype,
    )


def resolve_layers(
    adapter: Adapter,
    spec,
    localization: LocalizationRequest | None = None,
    progress: ProgressCallback | None = None,
) -> list[CrossAttentionLayer]:
    """The layers named by ``spec``: indices, a LocoGen run folder, or "auto" (runs ``localization`` first)."""
    table = adapter.layers
    if spec == "auto":
        if localization is None:
            raise LocoeditError("layers='auto' needs a LocoGen request to run; give layer indices instead")
        indices = localize(localization, adapter=adapter, progress=progress).chosen.layers
        logger.info("LocoGen chose layers %s", indices)
    elif isinstance(spec, (str, Path)):
        indices = LocalizationResult.load(spec).layers_for(table, str(Path(spec) / RESULT_FILE))
    else:
        indices = list(spec)
    bad = [i for i in indices if not 0 <= i < len(table)]
    if bad:
        raise LocoeditError(
            f"layer indices {bad} are out of range: this model has {len(table)} cross-attention layers "
            f"(0..{len(table) - 1})"
        )
    return [table[i] for i in sorted(indices)]
