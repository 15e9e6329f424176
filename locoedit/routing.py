"""Routing: which cross-attention layers read the target prompt instead of the original, per batch element.

A routing is plain data (serialisable, comparable); :class:`RoutingController` turns it into the tensors
that the attention processors read while the denoiser runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
            raise ValueError(f"routing names layer indices {sorted(set(bad))}; the model has layers 0..{num_layers - 1}")
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
            attention_mask = torch.where(pick[:, None, None], torch.cat([attention_mask[:offset], bias]), attention_mask)
        return states, attention_mask
