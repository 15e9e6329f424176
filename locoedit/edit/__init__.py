"""LocoEdit: closed-form and neuron-level edits of the localized layers, returned as weight deltas."""

from locoedit.edit.locoedit import EditRequest, compute_edit, edit_to_file

__all__ = ["EditRequest", "compute_edit", "edit_to_file"]
