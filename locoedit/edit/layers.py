"""Which layers an edit changes: indices, a LocoGen run folder, or ``auto`` (LocoGen on the edit's own prompts)."""

from __future__ import annotations

import logging
from pathlib import Path

from locoedit.core.errors import LocoeditError
from locoedit.core.progress import ProgressCallback
from locoedit.edit.request import EditRequestCore
from locoedit.localize import LocalizationResult, localize
from locoedit.localize.result import RESULT_FILE
from locoedit.models import Adapter
from locoedit.models.layers import CrossAttentionLayer

logger = logging.getLogger(__name__)


def resolve_layers(
    adapter: Adapter, request: EditRequestCore, progress: ProgressCallback | None = None
) -> list[CrossAttentionLayer]:
    """The layers ``request.layers`` names: indices, a LocoGen run folder, or "auto" (LocoGen on the edit's own
    prompt pairs first, :meth:`~locoedit.edit.request.EditRequestCore.localization`)."""
    table, spec = adapter.layers, request.layers
    if spec == "auto":
        localization = request.localization(request.pairs())
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
