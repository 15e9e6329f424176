"""Attention processors that apply a :class:`~locoedit.routing.Routing`, installed for the span of a context manager.

The routed processor wraps whatever processor the layer already had (SDPA, fused QKV, IF's added-KV
processor) and only swaps the text states it receives, so the attention arithmetic stays diffusers' own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from locoedit.layers import CrossAttentionLayer
from locoedit.routing import RoutingController


class RoutedAttnProcessor:
    """Feeds layer ``layer_index`` the target prompt's text states for the batch rows its routing selects."""

    def __init__(self, inner, layer_index: int, controller: RoutingController):
        self.inner = inner
        self.layer_index = layer_index
        self.controller = controller

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            encoder_hidden_states, attention_mask = self.controller.reroute(
                self.layer_index, encoder_hidden_states, attention_mask
            )
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


@contextmanager
def routed_processors(
    denoiser: torch.nn.Module, layers: list[CrossAttentionLayer], controller: RoutingController
) -> Iterator[RoutingController]:
    """Install routed processors on ``layers``; restore the previous processors on exit, even after an error.

    On a clean exit, checks that every routed layer actually ran: something that replaces processors mid-run
    (a loader calling ``set_attn_processor``) would otherwise silently turn the intervention off.
    """
    previous = denoiser.attn_processors
    installed = dict(previous)
    for layer in layers:
        key = f"{layer.name}.processor"
        installed[key] = RoutedAttnProcessor(previous[key], layer.index, controller)
    denoiser.set_attn_processor(installed)
    try:
        yield controller
    finally:
        denoiser.set_attn_processor(previous)
    silent = [layer.index for layer in layers if controller.calls[layer.index] == 0]
    if silent:
        raise RuntimeError(
            f"routed cross-attention layers {silent} never ran: their attention processors were replaced during "
            "generation (e.g. by set_attn_processor). Install other processors before routing, not during it."
        )
