"""The edit methods, by name: each is a request class and a function that computes a delta from it.

Every method shares the request core (:class:`~locoedit.edit.request.EditRequestCore`), one way of choosing its
layers (indices, a LocoGen run folder, or ``auto``: LocoGen on the edit's own prompt pairs), and one
:func:`edit_to_file`. The CLI makes one command per method and the web app one form, from this table; a new method
is a new row. The compute functions are imported when an edit runs, so reading the table loads no torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from locoedit.core.errors import LocoeditError
from locoedit.edit.request import ContextEmbedderRequest, EditRequest, EditRequestCore, NeuronRequest

if TYPE_CHECKING:
    from locoedit.core.progress import ProgressCallback
    from locoedit.delta import EditDelta
    from locoedit.localize import LocalizationResult
    from locoedit.models import Adapter
    from locoedit.models.layers import CrossAttentionLayer


@dataclass(frozen=True)
class EditMethod:
    name: str  # what a delta file's ``method`` says
    command: str  # the CLI command
    request: type[EditRequestCore]
    compute_path: str  # "module:function" taking (adapter, request, layers) -> EditDelta
    summary: str
    layered: bool = True  # False: the method edits no text-reading layer (it is given none)

    def compute(
        self,
        adapter: Adapter,
        request: EditRequestCore,
        layers: list[CrossAttentionLayer] | None = None,
        progress: ProgressCallback | None = None,
        localizations: list[tuple[str, LocalizationResult]] | None = None,
    ) -> EditDelta:
        """The delta of ``request`` on ``adapter``'s model, on ``layers`` or those the request names (``auto``: LocoGen
        first, or its ``localizations`` when given, then :meth:`compute_auto`). The model is not modified."""
        from locoedit.edit.common import with_model_defaults
        from locoedit.edit.layers import resolve_layers

        request = with_model_defaults(request, adapter)
        if not self.layered:
            layers = []
        elif layers is None and request.layers == "auto":
            return self.compute_auto(adapter, request, progress, localizations)
        elif layers is None:
            layers = resolve_layers(adapter, request)
        return self._solve(adapter, request, layers)

    def _solve(self, adapter: Adapter, request: EditRequestCore, layers: list[CrossAttentionLayer]) -> EditDelta:
        module, _, function = self.compute_path.partition(":")
        return getattr(importlib.import_module(module), function)(adapter, request, layers)

    def compute_auto(
        self,
        adapter: Adapter,
        request: EditRequestCore,
        progress: ProgressCallback | None = None,
        localizations: list[tuple[str, LocalizationResult]] | None = None,
    ) -> EditDelta:
        """``layers="auto"``: the edit on the union of LocoGen's windows, widened by a layer on each side (up to
        ``auto_widen`` times, cross-attention models only) while it does less than
        :data:`~locoedit.edit.layers.WIDEN_BELOW` of what routing the windows does on LocoGen's own prompts
        (:class:`~locoedit.edit.layers.EditEffect`). Each try is recorded in the delta's ``settings["auto_layers"]``
        (``effect_share`` empty: not checked, there was nothing wider to try)."""
        from locoedit.edit.layers import (
            LEAK_MARGIN,
            WIDEN_BELOW,
            EditEffect,
            auto_localize,
            layers_at,
            union_of_windows,
            widened,
        )
        from locoedit.scoring import resolve_scorer

        scorer = resolve_scorer(request.auto_scorer, None, adapter)
        localizations = localizations or auto_localize(adapter, request, scorer, progress)
        indices = [layer.index for layer in layers_at(adapter, union_of_windows(localizations), auto=True)]
        check = EditEffect(adapter, localizations, scorer)
        tries: list[dict] = []
        delta = self._solve(adapter, request, layers_at(adapter, indices))
        while True:
            rounds_left = 0 if adapter.joint_attention else request.auto_widen - len(tries)
            wider = widened(adapter, indices) if rounds_left > 0 else indices
            shares = check.shares(delta) if wider != indices else []
            tries.append({"layers": indices, "effect_share": [round(share, 4) for share in shares]})
            if wider == indices or min(shares) >= WIDEN_BELOW:
                break
            candidate = self._solve(adapter, request, layers_at(adapter, wider))
            mined = [item["prompt"] for item in delta.settings.get("entangled") or []]
            leaks = check.leak(delta, mined), check.leak(candidate, mined)
            if leaks[1] > leaks[0] + LEAK_MARGIN:  # the wider edit reaches the look-alikes: keep the narrower one
                tries.append({"layers": wider, "refused": True, "leak": [round(leak, 4) for leak in leaks]})
                break
            delta, indices = candidate, wider
        delta.settings["auto_layers"] = tries
        return delta


EDIT_METHODS: dict[str, EditMethod] = {
    method.name: method
    for method in (
        EditMethod(
            "locoedit",
            "edit",
            EditRequest,
            "locoedit.edit.key_value:key_value_edit",
            "LocoEdit: rewrite the key/value projections of the localized layers in closed form.",
        ),
        EditMethod(
            "neurons",
            "neurons",
            NeuronRequest,
            "locoedit.edit.neurons:neuron_edit",
            "Neuron-level edit: replace the key/value neurons that carry most of the concept into the attention by their "
            "neutral mean.",
        ),
        EditMethod(
            "uce-context",
            "context-edit",
            ContextEmbedderRequest,
            "locoedit.edit.context_embedder:context_embedder_edit",
            "SD3/FLUX baseline (UCE's shortcut): the closed form on context_embedder alone, no localization.",
            layered=False,
        ),
    )
}


def method_of(request: EditRequestCore) -> EditMethod:
    for method in EDIT_METHODS.values():
        if type(request) is method.request:
            return method
    raise LocoeditError(
        f"{type(request).__name__} is no edit method's request; use one of "
        f"{', '.join(m.request.__name__ for m in EDIT_METHODS.values())}"
    )


def compute_edit(
    adapter: Adapter,
    request: EditRequestCore,
    layers: list[CrossAttentionLayer] | None = None,
    progress: ProgressCallback | None = None,
    localizations: list[tuple[str, LocalizationResult]] | None = None,
) -> EditDelta:
    """The delta of any edit method's request (see :data:`EDIT_METHODS`); the model is not modified."""
    return method_of(request).compute(adapter, request, layers, progress, localizations)


def edit_to_file(
    request: EditRequestCore,
    out: str | Path,
    adapter: Adapter | None = None,
    progress: ProgressCallback | None = None,
) -> EditDelta:
    """Load the model (unless an adapter is given), compute the edit and write it to ``out`` atomically; on any
    error nothing is written. The CLI's ``edit`` and ``neurons`` commands."""
    from locoedit.core.dtypes import dtype_named
    from locoedit.delta import check_delta_path
    from locoedit.models import load_adapter

    method = method_of(request)
    check_delta_path(out)
    adapter = adapter or load_adapter(request.model, dtype_named(request.dtype), request.device)
    delta = method.compute(adapter, request, progress=progress)
    delta.save(out)
    return delta
