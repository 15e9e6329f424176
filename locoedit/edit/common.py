"""Validation shared by the edit requests (:class:`~locoedit.edit.locoedit.EditRequest`,
:class:`~locoedit.edit.neurons.NeuronRequest`)."""

from __future__ import annotations

import math
from dataclasses import replace

from locoedit.core.checks import check_positive_int
from locoedit.core.dtypes import check_dtype
from locoedit.core.errors import LocoeditError
from locoedit.edit.layers import check_auto_settings, check_layer_spec
from locoedit.edit.rows import DEFAULT_TOKEN, TOKEN_CHOICES
from locoedit.edit.templates import KINDS
from locoedit.models import Adapter, EditDefaults


def as_tuple(value) -> tuple:
    return (value,) if isinstance(value, (str, int)) else tuple(value)


def check_positive(name: str, value: float, flag: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise LocoeditError(f"{name} must be a finite number > 0, got {value!r}; pass e.g. {flag} 0.1")


def check_non_negative(name: str, value: float, flag: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise LocoeditError(f"{name} must be a finite number >= 0 (0 turns it off), got {value!r}; pass e.g. {flag} 1")


def check_texts(values: tuple, message: str) -> None:
    """Raise ``message`` if any of ``values`` is not text or only whitespace."""
    if any(not isinstance(v, str) or not v.strip() for v in values):
        raise LocoeditError(message)


def normalise_common_fields(request) -> None:
    """Check and normalise the fields every edit request has (frozen dataclass: set through object.__setattr__)."""
    for name in ("concepts", "prompts"):
        object.__setattr__(request, name, as_tuple(getattr(request, name)))
    empty = "concepts is empty or holds an empty string; give at least one --concept with text"
    if not request.concepts:
        raise LocoeditError(empty)
    check_texts(request.concepts, empty)
    if request.kind not in KINDS:
        raise LocoeditError(f"kind {request.kind!r} is unknown; use one of {', '.join(KINDS)} (--kind)")
    if request.token is not None and request.token not in TOKEN_CHOICES:
        raise LocoeditError(f"token {request.token!r} is unknown; use one of {', '.join(TOKEN_CHOICES)} (--token)")
    check_dtype(request.dtype)
    object.__setattr__(request, "layers", check_layer_spec(request.layers))
    seeds = request.auto_seeds
    object.__setattr__(
        request,
        "auto_seeds",
        check_auto_settings(request.auto_window, request.auto_threshold, (seeds,) if isinstance(seeds, int) else seeds),
    )
    check_positive_int("auto_steps", request.auto_steps)


def with_model_defaults(request, adapter: Adapter):
    """The request with what it leaves open taken from the model folder's recommendations (``locoedit.json``), else
    locoedit's: the token rows (``last-subject``, the paper's) and, without ``prompts``, templates: those of the
    neighbour group that holds the concept (a colour is written where a shape is not), else those of the kind."""
    recommended = adapter.recommended.edit or EditDefaults()
    changes = {}
    if request.token is None:
        changes["token"] = recommended.token or DEFAULT_TOKEN
    if not request.prompts:
        concepts = {c.strip().lower() for c in request.concepts}
        groups = [
            group
            for per_kind in recommended.neighbours.values()
            for group, members in per_kind.items()
            if concepts <= {m.lower() for m in members} and group in recommended.templates
        ]
        templates = recommended.templates.get(groups[0] if groups else request.kind)
        if templates:
            changes["prompts"] = tuple(templates)
    return replace(request, **changes)
