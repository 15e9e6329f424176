"""The layers where a denoiser reads the text, in execution order.

A layer is named twice: by its real diffusers module path (``down_blocks.1.attentions.0.transformer_blocks.0.attn2``)
and by a stable index in execution order (down, mid, up; numeric block order), which is the paper's numbering.

Three kinds (``stream``): ``cross``, a cross-attention layer reading the text encoder's states (UNets, PixArt);
``dual``, a joint-attention block with separate text and image projections (SD3's ``transformer_blocks.i.attn``,
FLUX's double-stream blocks: the image reads the text through ``add_k_proj``/``add_v_proj``); ``single``, a FLUX
single-stream block, where text and image rows are one sequence projected by the same ``to_k``/``to_v``. In joint
blocks the text is the denoiser's own text stream, rewritten block by block, not the encoder's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.models.attention_processor import Attention

# UNet sections run down -> mid -> up, but ``named_modules()`` registers them down, up, mid. FLUX runs its
# double-stream blocks before its single-stream ones.
_SECTION_RANK = {
    "down_blocks": 0,
    "mid_block": 1,
    "up_blocks": 2,
    "transformer_blocks": 0,
    "single_transformer_blocks": 1,
}

STREAMS = ("cross", "dual", "single")


@dataclass(frozen=True)
class LayerInfo:
    """A cross-attention layer as result files record it."""

    index: int  # position in execution order, 0-based
    name: str  # module path inside the denoiser
    block: str  # "down.1", "mid", "up.2", or "transformer" for DiT-style denoisers
    resolution: int  # side length of the token grid the layer attends from
    edit_projections: tuple[str, str]  # the key and value projections LocoEdit rewrites
    # "cross", "dual" or "single" (see the module docstring); files written before joint attention lack it: cross.
    stream: str = "cross"

    def __post_init__(self):
        if self.stream not in STREAMS:
            raise ValueError(f"layer stream {self.stream!r} is not one of {', '.join(STREAMS)}")


@dataclass(frozen=True)
class CrossAttentionLayer(LayerInfo):
    """A text-reading attention layer of a loaded denoiser: its description and the module itself."""

    module: torch.nn.Module = field(kw_only=True)  # diffusers' Attention (FLUX: FluxAttention)

    @property
    def info(self) -> LayerInfo:
        return LayerInfo(self.index, self.name, self.block, self.resolution, self.edit_projections, self.stream)


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
    if parts[0] in ("down_blocks", "mid_block", "up_blocks"):
        levels = len(config["block_out_channels"]) - 1
        if parts[0] == "mid_block":
            return "mid", sample_size // 2**levels
        block = int(parts[1])
        # Down block i attends before its downsampler; up block i after the previous block's upsampler.
        level = block if parts[0] == "down_blocks" else levels - block
        return f"{parts[0].removesuffix('_blocks')}.{block}", sample_size // 2**level
    patch_size = config.get("patch_size") or 1
    return "transformer", sample_size // patch_size


def _joint_attention_modules(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str]]:
    """(name, module, stream) of every joint-attention layer: SD3/FLUX dual-stream ``transformer_blocks.i.attn``
    (separate text projections, not cross-attention: the text joins the image rows) and FLUX single-stream
    ``single_transformer_blocks.i.attn``. SD3.5's ``attn2`` (image rows only) reads no text and is left out."""
    found = []
    for name, module in denoiser.named_modules():
        parts = name.split(".")
        if len(parts) != 3 or parts[2] != "attn" or not parts[1].isdigit():
            continue
        if parts[0] == "transformer_blocks" and getattr(module, "added_kv_proj_dim", None) is not None:
            found.append((name, module, "dual"))
        elif parts[0] == "single_transformer_blocks":
            found.append((name, module, "single"))
    return found


def _joint_resolution(config) -> int:
    """Side of the image-token grid at the config's sample size; 0 for FLUX, which has no fixed grid (rotary
    positions: the grid follows the requested image size)."""
    sample_size = config.get("sample_size")
    if sample_size is None:
        return 0
    sample_size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
    return sample_size // (config.get("patch_size") or 1)


def list_cross_attention_layers(denoiser: torch.nn.Module) -> list[CrossAttentionLayer]:
    """Every attention module of ``denoiser`` that reads the text, in execution order.

    Works for UNet2DConditionModel (SD-1/2, SD-XL, DeepFloyd IF), DiT-style transformers (PixArt) and joint-attention
    transformers (SD3, FLUX: dual-stream blocks, then single-stream ones), also on the ``meta`` device, since it only
    reads module structure and config.
    """
    joint = _joint_attention_modules(denoiser)
    if joint:
        joint.sort(key=lambda item: _execution_key(item[0]))
        resolution = _joint_resolution(denoiser.config)
        layers = []
        for index, (name, module, stream) in enumerate(joint):
            # Dual-stream: the image reads the text stream through add_k_proj/add_v_proj. Single-stream: through
            # to_k/to_v, which project the image rows too.
            projections = ("add_k_proj", "add_v_proj") if stream == "dual" else ("to_k", "to_v")
            block = f"{'joint' if stream == 'dual' else 'single'}.{name.split('.')[1]}"
            layers.append(CrossAttentionLayer(index, name, block, resolution, projections, stream, module=module))
        return layers
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
        layers.append(CrossAttentionLayer(index, name, block, resolution, projections, module=module))
    if not layers:
        raise ValueError(f"{type(denoiser).__name__} has no cross-attention layers: it does not read text")
    return layers
