"""The shipped prompt templates for each kind of concept (``locoedit/data/prompt_templates.json``)."""

from __future__ import annotations

import json
from importlib import resources

from locoedit.core.errors import LocoeditError

KINDS = ("style", "object", "fact")


def prompt_templates(kind: str) -> tuple[str, ...]:
    """The shipped templates for ``kind`` (style, object, fact); ``{c}`` stands for the concept."""
    if kind not in KINDS:
        raise LocoeditError(f"kind {kind!r} is unknown; use one of {', '.join(KINDS)} (--kind)")
    data = json.loads(resources.files("locoedit").joinpath("data/prompt_templates.json").read_text())
    return tuple(data[kind])
