"""Interventions: changes to how a model computes, all installed the same way.

Each is an :class:`Intervention` (the contract lives with the adapters that run it, in ``locoedit.models``):
``adapter.generate(prompts, seeds, settings, interventions=[...])`` prepares, installs (restoring the model on exit,
also after an error) and verifies every one. Text routing (LocoGen), hidden-state recording and patching (causal
tracing) and weight deltas (edits, :mod:`locoedit.delta`, with their file format, export and model cards) are the
three kinds.
"""

from locoedit.interventions.patching import ActivationPatch, ActivationRecorder
from locoedit.interventions.routing import Routing, TextRouting
from locoedit.models import Intervention

__all__ = [
    "ActivationPatch",
    "ActivationRecorder",
    "Intervention",
    "Routing",
    "TextRouting",
]
