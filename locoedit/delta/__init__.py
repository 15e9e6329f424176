"""Edits as data: the delta file, applying it at a strength, exporting it as a LoRA, and its model card.

- :mod:`locoedit.delta.file`: :class:`EditDelta` (low-rank factors or new values, checked against the model it was
  computed for), :class:`AppliedDelta` (revert bit for bit) and :class:`ScaledDelta` (a delta at a strength);
- :mod:`locoedit.delta.apply`: the edited pipeline as a ``save_pretrained`` folder (``locoedit apply``);
- :mod:`locoedit.delta.export`: LoRA files in kohya and peft layouts (``locoedit export``);
- :mod:`locoedit.delta.card`: the Hugging Face model card both of those write beside their output.

Names are imported on first use, so ``import locoedit.delta`` loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from locoedit.core.lazy import lazy_exports

if TYPE_CHECKING:
    from locoedit.delta.apply import apply_delta_to_folder
    from locoedit.delta.card import apply_with_card, export_with_card, model_card
    from locoedit.delta.export import LoraExport, export_lora
    from locoedit.delta.file import AppliedDelta, EditDelta, ScaledDelta, check_delta_path, check_strength

_WHERE = {
    "AppliedDelta": "file",
    "EditDelta": "file",
    "ScaledDelta": "file",
    "check_delta_path": "file",
    "check_strength": "file",
    "apply_delta_to_folder": "apply",
    "LoraExport": "export",
    "export_lora": "export",
    "apply_with_card": "card",
    "export_with_card": "card",
    "model_card": "card",
}
__all__ = [
    "AppliedDelta",
    "EditDelta",
    "LoraExport",
    "ScaledDelta",
    "apply_delta_to_folder",
    "apply_with_card",
    "check_delta_path",
    "check_strength",
    "export_lora",
    "export_with_card",
    "model_card",
]

__getattr__ = lazy_exports(__name__, _WHERE)
