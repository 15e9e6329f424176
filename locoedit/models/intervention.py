"""The contract between an adapter's denoising loop and the interventions it runs (``locoedit.interventions``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the adapter module imports this one
    from locoedit.models.base import Adapter, EncodedPrompts


class Intervention(ABC):
    """A change to how an adapter's model computes, for the span of one generation or of a ``with`` block.

    - ``prepare`` may rewrite the encoded prompts handed to the pipeline (text that reaches the denoiser outside
      the modules an intervention hooks); by default it returns them unchanged;
    - ``installed`` is a context manager that installs the change on entry and restores the model on exit, also
      when generation raises;
    - ``verify`` runs after a generation that finished and raises if the change never took effect (for instance
      because something replaced its attention processors mid-run).
    """

    def prepare(self, adapter: Adapter, prompts: EncodedPrompts) -> EncodedPrompts:
        return prompts

    @abstractmethod
    def installed(self, adapter: Adapter) -> AbstractContextManager[None]: ...

    def verify(self) -> None:
        return None
