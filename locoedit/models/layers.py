"""The cross-attention layers of a denoiser, in execution order.

A layer is named twice: by its real diffusers module path (``down_blocks.1.attentions.0.transformer_blocks.0.attn2``)
and by a stable index in execution order (down, mid, up; numeric block order), which is the paper's numbering.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention

# UNet sections run down -> mid -> up, but ``named_modules()`` registers them down, up, mid.
_SECTION_RANK = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


@dataclass(frozen=True)
class LayerInfo:
    """A cross-attention layer as result files record it."""

    index: int  # position in execution order, 0-based
    name: str  # module path inside the denoiser
    block: str  # "down.1", "mid", "up.2", or "transformer" for DiT-style denoisers
    resolution: int  # side length of the token grid the layer attends from
    edit_projections: tuple[str, str]  # the key and value projections LocoEdit rewrites


@dataclass(frozen=True)
class CrossAttentionLayer(LayerInfo):
    """A cross-attention layer of a loaded denoiser: its description and the module itself."""

    module: Attention

    @property
    def info(self) -> LayerInfo:
        return LayerInfo(self.index, self.name, self.block, self.resolution, self.edit_projections)


def _execution_key(name: str) -> tuple:
    parts = []
    for part in name.split("."):
        if part in _SECTION_RANK:
            parts.append((0, _SECTION_RANK[part], ""))
        elif part.isdigit():
            parts.append((1, int(part), ""))
        else:
            parts.append((2, 0, part))
    return tuple(parts)


def _block_and_resolution(name: str, config) -> tuple[str, int]:
    parts = name.split(".")
    if "sample_size" not in config:
        raise ValueError(f"denoiser config has no sample_size; cannot place layer {name!r}")
    sample_size = config["sample_size"]
    sample_size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
    if parts[0] in _SECTION_RANK:
        levels = len(config["block_out_channels"]) - 1
        if parts[0] == "mid_block":
            return "mid", sample_size // 2**levels
        block = int(parts[1])
        # Down block i attends before its downsampler; up block i after the previous block's upsampler.
        level = block if parts[0] == "down_blocks" else levels - block
        return f"{parts[0].removesuffix('_blocks')}.{block}", sample_size // 2**level
    patch_size = config.get("patch_size") or 1
    return "transformer", sample_size // patch_size


def list_cross_attention_layers(denoiser: torch.nn.Module) -> list[CrossAttentionLayer]:
    """Every attention module of ``denoiser`` that reads the text, in execution order.

    Works for UNet2DConditionModel (SD-1/2, SD-XL, DeepFloyd IF) and DiT-style transformers (PixArt), also on
    the ``meta`` device, since it only reads module structure and config.
    """
    found = [
        (name, module)
        for name, module in denoiser.named_modules()
        if isinstance(module, Attention) and module.is_cross_attention
    ]
    found.sort(key=lambda item: _execution_key(item[0]))
    layers = []
    for index, (name, module) in enumerate(found):
        block, resolution = _block_and_resolution(name, denoiser.config)
        # DeepFloyd IF joins the text to the image tokens through extra projections instead of to_k/to_v.
        projections = ("add_k_proj", "add_v_proj") if module.added_kv_proj_dim is not None else ("to_k", "to_v")
        layers.append(CrossAttentionLayer(index, name, block, resolution, projections, module))
    if not layers:
        raise ValueError(f"{type(denoiser).__name__} has no cross-attention layers: it does not read text")
    return layers
