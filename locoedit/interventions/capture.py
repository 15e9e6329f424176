"""Record the text rows a joint-attention denoiser's dual-stream blocks project to keys and values.

In SD3 and FLUX the image reads the text through each dual-stream block's ``add_k_proj``/``add_v_proj``, and what
those projections receive is the denoiser's own text stream: rewritten by every earlier block, then normed and
modulated by the block's timestep embedding (which carries the pooled text too). There is no one set of text states
to read off the encoder, as there is for cross-attention; the rows differ per block and per denoising step.

:class:`TextStreamCapture` records them where they are used: a forward pre-hook on each dual-stream block's
``add_k_proj`` keeps the chosen token positions of each prompt's conditional row at every call (one call per
denoising step), so LocoEdit fits a block's projections to the rows that block really receives, over the whole
trajectory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from locoedit.core.errors import LocoeditError
from locoedit.models import Adapter, Intervention
from locoedit.models.layers import CrossAttentionLayer


def row_index(positions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:  # [rows] long x2
    """Which prompt and which token position each selected row is: ``positions[i]`` of prompt ``i``, in order."""
    prompt_index = torch.tensor([i for i, chosen in enumerate(positions) for _ in chosen], dtype=torch.long)
    position_index = torch.tensor([p for chosen in positions for p in chosen], dtype=torch.long)
    return prompt_index, position_index


class TextStreamCapture(Intervention):
    """Keep ``positions[i]`` of prompt ``i``'s text stream as every dual-stream block of ``layers`` projects it,
    at every denoising step. Only the conditional rows are kept (the last ``len(positions)`` rows of each call:
    pipelines with classifier-free guidance batch [unconditional, conditional])."""

    def __init__(self, layers: list[CrossAttentionLayer], positions: list[list[int]]):
        self.layers = [layer for layer in layers if layer.stream == "dual"]
        self.prompts = len(positions)
        self.prompt_index, self.position_index = row_index(positions)
        self.steps: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in self.layers}

    def _record(self, name: str, text: torch.Tensor) -> None:  # text: [batch, tokens, dim]
        if len(self.position_index) and int(self.position_index.max()) >= text.shape[1]:
            raise LocoeditError(
                f"token position {int(self.position_index.max())} is beyond the {text.shape[1]} text rows of "
                f"block {name}; choose positions inside the prompt's encoded rows"
            )
        conditional = text[-self.prompts :]
        index = self.prompt_index.to(text.device), self.position_index.to(text.device)
        self.steps[name].append(conditional[index].detach())

    @contextmanager
    def installed(self, adapter: Adapter) -> Iterator[None]:
        handles = []
        for layer in self.layers:
            projection = getattr(layer.module, layer.edit_projections[0])  # add_k_proj: add_v_proj reads the same
            hook = lambda module, args, name=layer.name: self._record(name, args[0])
            handles.append(projection.register_forward_pre_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def verify(self) -> None:
        silent = [name for name, calls in self.steps.items() if not calls]
        if silent:
            raise RuntimeError(
                f"dual-stream blocks {silent} never projected their text: their attention processors bypass "
                "add_k_proj. Use diffusers' joint attention processors while capturing text rows."
            )

    def rows(self) -> dict[str, torch.Tensor]:  # block name -> [rows, steps, dim]
        """What was recorded, per block: row ``r`` is position ``position_index[r]`` of prompt ``prompt_index[r]``."""
        return {name: torch.stack(calls, dim=1) for name, calls in self.steps.items()}
