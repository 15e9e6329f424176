"""Text routing: which cross-attention layers read the target prompt instead of the original, per batch element.

A :class:`Routing` is plain data (serialisable, comparable). :class:`TextRouting` is the intervention that applies
it: a :class:`RoutingController` holds the target's text states, and a :class:`RoutedAttnProcessor` wrapped
around each layer's own processor (SDPA, fused QKV, IF's added-KV processor) swaps the text states it receives,
so the attention arithmetic stays diffusers' own.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from locoedit.models import Adapter, EncodedPrompts, Intervention, TextConditioning
from locoedit.models.layers import CrossAttentionLayer


@dataclass(frozen=True)
class Routing:
    """``target_layers[b]`` are the layer indices at which batch element ``b`` reads the target prompt.

    Only the conditional half of classifier-free guidance is rerouted; the unconditional half is untouched.
    ``route_added_text`` also gives routed elements the target's text where it enters the denoiser outside
    cross-attention (SD-XL's pooled embedding, DeepFloyd IF's text time-embedding). The paper does not, so it
    is off by default.
    """

    target_layers: tuple[tuple[int, ...], ...]
    route_added_text: bool = False

    def __post_init__(self):
        object.__setattr__(self, "target_layers", tuple(tuple(sorted(set(ls))) for ls in self.target_layers))

    @classmethod
    def uniform(cls, layers, batch_size: int, route_added_text: bool = False) -> Routing:
        return cls(tuple(tuple(layers) for _ in range(batch_size)), route_added_text)

    @property
    def batch_size(self) -> int:
        return len(self.target_layers)

    def rows_routed_anywhere(self) -> torch.Tensor:  # [batch] bool
        return torch.tensor([bool(layers) for layers in self.target_layers])

    def to_json(self) -> dict:
        return {"target_layers": [list(ls) for ls in self.target_layers], "route_added_text": self.route_added_text}


class RoutingController:
    """Holds the per-layer, per-row selection and the target's text states while one generation runs."""

    def __init__(
        self,
        routing: Routing,
        num_layers: int,
        target_states: torch.Tensor,  # [batch, tokens, dim] as the cross-attention layers receive them
        target_mask: torch.Tensor | None = None,  # [batch, tokens] 1 = attend, for denoisers that mask text
    ):
        if target_states.shape[0] != routing.batch_size:
            raise ValueError(
                f"routing has {routing.batch_size} batch elements but the target states have {target_states.shape[0]}"
            )
        bad = [i for ls in routing.target_layers for i in ls if not 0 <= i < num_layers]
        if bad:
            raise ValueError(
                f"routing names layer indices {sorted(set(bad))}; the model has layers 0..{num_layers - 1}"
            )
        self.routing = routing
        self.selected = torch.zeros(num_layers, routing.batch_size, dtype=torch.bool)  # [layers, batch]
        for row, layers in enumerate(routing.target_layers):
            self.selected[list(layers), row] = True
        self.target_states = target_states
        self.target_mask = target_mask
        self.calls = torch.zeros(num_layers, dtype=torch.long)

    def reroute(
        self,
        layer_index: int,
        states: torch.Tensor,  # [batch or 2*batch, tokens, dim]
        attention_mask: torch.Tensor | None,  # None, or [batch or 2*batch, 1, tokens] additive bias
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.calls[layer_index] += 1
        batch = self.routing.batch_size
        if states.shape[0] not in (batch, 2 * batch):
            raise RuntimeError(
                f"cross-attention layer {layer_index} got {states.shape[0]} text rows for a routing of {batch}; "
                "pass exactly one prompt embedding per routed batch element"
            )
        # Pipelines concatenate [unconditional, conditional]: the conditional rows are the last `batch`.
        offset = states.shape[0] - batch
        rows = self.selected[layer_index].to(states.device)
        if not rows.any():
            return states, attention_mask
        pick = torch.cat([torch.zeros(offset, dtype=torch.bool, device=states.device), rows])
        target = self.target_states.to(states.device, states.dtype)
        states = torch.where(pick[:, None, None], torch.cat([states[:offset], target]), states)
        if attention_mask is not None and self.target_mask is not None:
            # Diffusers turns a 0/1 text mask into this additive bias before attention.
            bias = ((1 - self.target_mask.to(attention_mask.dtype)) * -10000.0)[:, None, :].to(attention_mask.device)
            attention_mask = torch.where(
                pick[:, None, None], torch.cat([attention_mask[:offset], bias]), attention_mask
            )
        return states, attention_mask


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
    (:meth:`TextRouting.verify` then checks that they ran.)"""
    attention = typing.cast(Any, denoiser)  # a diffusers model: attn_processors, set_attn_processor
    previous = attention.attn_processors
    installed = dict(previous)
    for layer in layers:
        key = f"{layer.name}.processor"
        installed[key] = RoutedAttnProcessor(previous[key], layer.index, controller)
    attention.set_attn_processor(installed)
    try:
        yield controller
    finally:
        attention.set_attn_processor(previous)


class TextRouting(Intervention):
    """Feed ``target``'s text to the layers ``routing.target_layers[b]`` in batch row ``b``.

    Only the conditional half of classifier-free guidance is rerouted. With ``routing.route_added_text``, routed
    rows also get the target's text where it enters the denoiser outside cross-attention (the adapter knows where).
    """

    def __init__(self, routing: Routing, target: TextConditioning):  # target: [batch, tokens, dim]
        self.routing = routing
        self.target = target
        self._controller: RoutingController | None = None
        self._added_text: AbstractContextManager[None] | None = None

    def prepare(self, adapter: Adapter, prompts: EncodedPrompts) -> EncodedPrompts:
        batch = prompts.conditional.embeds.shape[0]
        if self.routing.batch_size != batch:
            raise ValueError(f"routing covers {self.routing.batch_size} rows but {batch} prompts were given")
        if not self.routing.route_added_text:
            return prompts
        conditional, self._added_text = adapter.route_added_text(
            self.routing.rows_routed_anywhere(), prompts.conditional, self.target
        )
        return EncodedPrompts(conditional, prompts.unconditional)

    @contextmanager
    def installed(self, adapter: Adapter) -> Iterator[None]:
        self._controller = RoutingController(
            self.routing, len(adapter.layers), adapter.attention_states(self.target), self.target.mask
        )
        routed = [layer for layer in adapter.layers if self._controller.selected[layer.index].any()]
        with routed_processors(adapter.denoiser, routed, self._controller):
            if self._added_text is None:
                yield
            else:
                with self._added_text:
                    yield
        self._added_text = None

    def verify(self) -> None:
        controller = self._controller
        assert controller is not None  # verify runs after installed(), which sets it
        silent = [i for i in range(len(controller.calls)) if controller.selected[i].any() and controller.calls[i] == 0]
        if silent:
            raise RuntimeError(
                f"routed cross-attention layers {silent} never ran: their attention processors were replaced during "
                "generation (e.g. by set_attn_processor). Install other processors before routing, not during it."
            )
