"""What an edit request leaves open, taken from the model folder's recommendations (``locoedit.json``)."""

from __future__ import annotations

from dataclasses import replace

from locoedit.edit.request import DEFAULT_JOINT_TOKEN, DEFAULT_TOKEN
from locoedit.models import Adapter, EditDefaults


def with_model_defaults(request, adapter: Adapter):
    """The request with what it leaves open taken from the model folder's recommendations (``locoedit.json``), else
    locoedit's: the token rows (``last-subject``, the paper's; ``from-concept`` on joint attention) and, without
    ``prompts``, templates: those of the neighbour group that holds the concept (a colour is written where a shape is
    not), else those of the kind."""
    recommended = adapter.recommended.edit or EditDefaults()
    changes: dict[str, object] = {}
    if request.token is None:
        changes["token"] = recommended.token or (DEFAULT_JOINT_TOKEN if adapter.joint_attention else DEFAULT_TOKEN)
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


def uses_model_templates(request, adapter: Adapter) -> bool:
    """Whether the (defaulted) request's prompts are the templates the model gives a request without ``prompts``:
    prompts a user wrote are the edit's whole prompt set."""
    return with_model_defaults(replace(request, prompts=()), adapter).prompts == request.prompts
