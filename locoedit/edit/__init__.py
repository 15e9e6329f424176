"""Edits of the localized layers, by method (:data:`EDIT_METHODS`): LocoEdit's closed form on the key/value
projections (``locoedit``), neuron-level edits (``neurons``) and, on SD3/FLUX, UCE's shortcut on ``context_embedder``
alone (``uce-context``, a baseline), each returned as a weight delta.

The requests import no torch; the methods' code is imported when an edit is computed.
"""

from locoedit.edit.methods import EDIT_METHODS, EditMethod, compute_edit, edit_to_file, method_of
from locoedit.edit.request import ContextEmbedderRequest, EditRequest, EditRequestCore, NeuronRequest

__all__ = [
    "ContextEmbedderRequest",
    "EDIT_METHODS",
    "EditMethod",
    "EditRequest",
    "EditRequestCore",
    "NeuronRequest",
    "compute_edit",
    "edit_to_file",
    "method_of",
]
