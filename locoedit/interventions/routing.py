"""Text routing: which cross-attention layers read the target prompt instead of the original, per batch element.

A :class:`Routing` is plain data (serialisable, comparable). :class:`TextRouting` is the intervention that applies
it: a :class:`RoutingController` holds the target's text states, and a :class:`RoutedAttnProcessor` wrapped
around each layer's own processor (SDPA, fused QKV, IF's added-KV processor) swaps the text states it receives,
so the attention arithmetic stays diffusers' own.

Joint attention (SD3, FLUX) has no fixed text states to swap: every block rewrites the text stream. There the two
prompts' text streams run side by side through the denoiser (the pipeline gets ``[original rows, target rows]`` as
one prompt), and a :class:`JointRoutedAttnProcessor` on every joint block runs the block's own processor once per
stream on the same image rows: each stream reads the image and itself, as in an unrouted run; the image rows keep
the target pass's output in the blocks the routing selects for their batch row and the original pass's elsewhere.
Routing no block is then exactly the unrouted model, and routing every block (with ``route_added_text``) exactly
the target prompt's generation.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
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
        self.routing = routing
        self.selected = _selection(routing, num_layers)  # [layers, batch]
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


def _selection(routing: Routing, num_layers: int) -> torch.Tensor:  # [layers, batch] bool
    bad = [i for ls in routing.target_layers for i in ls if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"routing names layer indices {sorted(set(bad))}; the model has layers 0..{num_layers - 1}")
    selected = torch.zeros(num_layers, routing.batch_size, dtype=torch.bool)
    for row, layers in enumerate(routing.target_layers):
        selected[list(layers), row] = True
    return selected


class JointRoutingController:
    """The per-layer, per-row selection while a joint-attention denoiser runs two text streams side by side: each
    stream has ``text_rows`` rows, the original's first."""

    def __init__(self, routing: Routing, num_layers: int, text_rows: int, text_first: bool):
        self.routing = routing
        self.selected = _selection(routing, num_layers)  # [layers, batch]
        self.text_rows = text_rows
        self.text_first = text_first  # FLUX: [text, image]; SD3: [image, text]
        self.calls = torch.zeros(num_layers, dtype=torch.long)

    def rows(self, layer_index: int, batch: int, device: torch.device) -> torch.Tensor | None:  # [batch] bool
        """Which rows of this call read the target stream; None when none does."""
        self.calls[layer_index] += 1
        routed = self.routing.batch_size
        if batch not in (routed, 2 * routed):
            raise RuntimeError(
                f"joint-attention layer {layer_index} got {batch} rows for a routing of {routed}; "
                "pass exactly one prompt embedding per routed batch element"
            )
        selected = self.selected[layer_index]
        if not selected.any():
            return None
        # Pipelines with classifier-free guidance batch [unconditional, conditional]: the conditional rows are last.
        return torch.cat([torch.zeros(batch - routed, dtype=torch.bool), selected]).to(device)

    def streams(self, sequence: torch.Tensor, image_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A joint sequence [..., 2 * text + image, ...] along dim -2 (rotary tables: [2 * text + image, dim]) as the
        original's and the target's [text + image] sequences, in the model's own order."""
        t = self.text_rows
        if self.text_first:
            original, target, image = sequence[..., :t, :], sequence[..., t : 2 * t, :], sequence[..., 2 * t :, :]
            return torch.cat([original, image], dim=-2), torch.cat([target, image], dim=-2)
        image, original, target = (
            sequence[..., :image_rows, :],
            sequence[..., image_rows : image_rows + t, :],
            sequence[..., image_rows + t :, :],
        )
        return torch.cat([image, original], dim=-2), torch.cat([image, target], dim=-2)


class JointRoutedAttnProcessor:
    """A joint-attention block with the original's and the target's text streams side by side (see the module
    docstring). ``stream`` "dual": the text arrives as ``encoder_hidden_states`` [batch, 2 * text, dim]; "single"
    (FLUX): text and image arrive as one sequence ``hidden_states`` [batch, 2 * text + image, dim]. Returns what
    the wrapped processor returns, for both streams."""

    def __init__(self, inner, layer_index: int, stream: str, controller: JointRoutingController):
        self.inner = inner
        self.layer_index = layer_index
        self.stream = stream
        self.controller = controller

    def _rotary(self, image_rotary_emb, image_rows: int):
        if image_rotary_emb is None:
            return None, None
        parts = [self.controller.streams(table, image_rows) for table in image_rotary_emb]  # (cos, sin)
        return tuple(p[0] for p in parts), tuple(p[1] for p in parts)

    def _run(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, kwargs):
        if rotary is not None:
            kwargs = {**kwargs, "image_rotary_emb": rotary}
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None, **kwargs
    ):
        control = self.controller
        t = control.text_rows
        if self.stream == "dual":
            image_rows = hidden_states.shape[1]
            rot_original, rot_target = self._rotary(image_rotary_emb, image_rows)
            image_o, text_o = self._run(
                attn, hidden_states, encoder_hidden_states[:, :t], attention_mask, rot_original, kwargs
            )
            image_t, text_t = self._run(
                attn, hidden_states, encoder_hidden_states[:, t:], attention_mask, rot_target, kwargs
            )
            rows = control.rows(self.layer_index, hidden_states.shape[0], hidden_states.device)
            image = image_o if rows is None else torch.where(rows[:, None, None], image_t, image_o)
            return image, torch.cat([text_o, text_t], dim=1)
        # Single-stream: one sequence of both texts and the image, projected by the same to_q/to_k/to_v.
        image_rows = hidden_states.shape[1] - 2 * t
        rot_original, rot_target = self._rotary(image_rotary_emb, image_rows)
        original, target = control.streams(hidden_states, image_rows)
        out_o = self._run(attn, original, None, attention_mask, rot_original, kwargs)
        out_t = self._run(attn, target, None, attention_mask, rot_target, kwargs)
        rows = control.rows(self.layer_index, hidden_states.shape[0], hidden_states.device)
        if control.text_first:
            text_o, image_o, text_t, image_t = out_o[:, :t], out_o[:, t:], out_t[:, :t], out_t[:, t:]
        else:
            image_o, text_o, image_t, text_t = out_o[:, :-t], out_o[:, -t:], out_t[:, :-t], out_t[:, -t:]
        image = image_o if rows is None else torch.where(rows[:, None, None], image_t, image_o)
        return torch.cat([text_o, text_t, image] if control.text_first else [image, text_o, text_t], dim=1)


@contextmanager
def routed_processors(
    denoiser: torch.nn.Module,
    layers: list[CrossAttentionLayer],
    controller: RoutingController | JointRoutingController,
) -> Iterator[RoutingController | JointRoutingController]:
    """Install routed processors on ``layers``; restore the previous processors on exit, even after an error.
    (:meth:`TextRouting.verify` then checks that they ran.)"""
    attention = typing.cast(Any, denoiser)  # a diffusers model: attn_processors, set_attn_processor
    previous = attention.attn_processors
    installed = dict(previous)
    for layer in layers:
        key = f"{layer.name}.processor"
        if isinstance(controller, JointRoutingController):
            installed[key] = JointRoutedAttnProcessor(previous[key], layer.index, layer.stream, controller)
        else:
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
        self._controller: RoutingController | JointRoutingController | None = None
        self._added_text: AbstractContextManager[None] | None = None
        self._text_rows: int | None = None  # joint attention: rows per text stream, set by prepare

    def prepare(self, adapter: Adapter, prompts: EncodedPrompts) -> EncodedPrompts:
        batch = prompts.conditional.embeds.shape[0]
        if self.routing.batch_size != batch:
            raise ValueError(f"routing covers {self.routing.batch_size} rows but {batch} prompts were given")
        if self.routing.route_added_text:
            conditional, self._added_text = adapter.route_added_text(
                self.routing.rows_routed_anywhere(), prompts.conditional, self.target
            )
            prompts = EncodedPrompts(conditional, prompts.unconditional)
        if adapter.joint_attention:
            prompts = self._side_by_side(prompts)
        return prompts

    def _side_by_side(self, prompts: EncodedPrompts) -> EncodedPrompts:
        """The original's and the target's text rows as one prompt ([batch, 2 * text, dim]); the unconditional half
        (never routed) carries its own rows twice, so both halves have the same shape."""
        original, target = prompts.conditional.embeds, self.target.embeds.to(prompts.conditional.embeds)
        if target.shape != original.shape:
            raise ValueError(
                f"target text states {tuple(target.shape)} do not match the prompts' {tuple(original.shape)}; "
                "encode both with the same adapter"
            )
        self._text_rows = original.shape[1]
        unconditional = prompts.unconditional.embeds
        return EncodedPrompts(
            replace(prompts.conditional, embeds=torch.cat([original, target], dim=1)),
            replace(prompts.unconditional, embeds=torch.cat([unconditional, unconditional], dim=1)),
        )

    @contextmanager
    def installed(self, adapter: Adapter) -> Iterator[None]:
        if adapter.joint_attention:
            if self._text_rows is None:
                raise RuntimeError("joint-attention routing is installed by adapter.generate, after prepare")
            self._controller = JointRoutingController(
                self.routing, len(adapter.layers), self._text_rows, adapter.joint_text_first
            )
            # Every joint block carries both streams, so every block splits them, routed or not.
            routed = list(adapter.layers)
        else:
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
        self._text_rows = None

    def verify(self) -> None:
        controller = self._controller
        assert controller is not None  # verify runs after installed(), which sets it
        silent = [i for i in range(len(controller.calls)) if controller.selected[i].any() and controller.calls[i] == 0]
        if silent:
            raise RuntimeError(
                f"routed cross-attention layers {silent} never ran: their attention processors were replaced during "
                "generation (e.g. by set_attn_processor). Install other processors before routing, not during it."
            )
