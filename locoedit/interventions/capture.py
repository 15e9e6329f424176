"""Record what a generation computes inside the text-reading layers: the text rows a joint-attention denoiser's
dual-stream blocks project to keys and values (:class:`TextStreamCapture`), and the scale of the image queries
(:class:`QueryScale`, for the neuron-level edit).

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

import typing
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


@contextmanager
def _removed_after(handles: list) -> Iterator[None]:
    """Remove the hooks ``handles`` when the block ends, also when it raises."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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
        with _removed_after(handles):
            yield

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


class QueryScale(Intervention):
    """The root mean square of each output neuron of ``layers``' query projections (``to_q``: the image's queries),
    over every token, batch row and denoising step of the generations it is installed for: how strongly a key
    neuron's change reaches the attention logits."""

    def __init__(self, layers: list[CrossAttentionLayer]):
        self.layers = layers
        self.squares: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {layer.name: 0 for layer in layers}

    def _record(self, name: str, queries: torch.Tensor) -> None:  # [batch, tokens, out]
        flat = queries.detach().reshape(-1, queries.shape[-1]).to(torch.float64)
        squares = (flat**2).sum(0)
        self.squares[name] = squares + self.squares[name] if name in self.squares else squares
        self.counts[name] += len(flat)

    @contextmanager
    def installed(self, adapter: Adapter) -> Iterator[None]:
        handles = []
        for layer in self.layers:
            hook = lambda module, args, output, name=layer.name: self._record(name, output)
            query = typing.cast(torch.nn.Module, layer.module.to_q)  # diffusers' Attention and FluxAttention
            handles.append(query.register_forward_hook(hook))
        with _removed_after(handles):
            yield

    def verify(self) -> None:
        silent = [name for name, count in self.counts.items() if not count]
        if silent:
            raise RuntimeError(f"layers {silent} never computed their queries with to_q during the generation")

    def rms(self) -> dict[str, torch.Tensor]:  # layer name -> [out] float64
        return {name: (self.squares[name] / self.counts[name]).sqrt() for name in self.counts}
