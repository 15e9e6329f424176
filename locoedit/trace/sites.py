"""The sites causal tracing restores: the denoiser's blocks and the text encoders' layers, in execution order.

A site is named by its real module path in the pipeline, component first (``unet.down_blocks.1.resnets.0``,
``text_encoder.text_model.encoder.layers.2.mlp``), the same names the patching interventions take.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from locoedit.models import Adapter, GenerationSettings


@dataclass(frozen=True)
class Site:
    name: str  # pipeline path, component first
    part: str  # "denoiser" or "text_encoder"
    # resnet, transformer_block, self_attention, cross_attention, joint_attention (SD3, FLUX: the first tensor it
    # returns, the image rows of a dual-stream block, text and image rows of a single-stream one); encoder_layer,
    # encoder_attention, encoder_mlp
    kind: str
    index: int  # position in execution order within its part


def _denoiser_kind(path: str, module: torch.nn.Module) -> str | None:
    if isinstance(module, ResnetBlock2D):
        return "resnet"
    if isinstance(module, Transformer2DModel) or (
        isinstance(module, BasicTransformerBlock) and re.fullmatch(r"transformer_blocks\.\d+", path)
    ):
        return "transformer_block"
    if _JOINT_ATTENTION.fullmatch(path):  # SD3's Attention and FLUX's FluxAttention alike
        return "joint_attention"
    if isinstance(module, Attention):
        return "cross_attention" if module.is_cross_attention else "self_attention"
    return None


_JOINT_ATTENTION = re.compile(r"(?:single_)?transformer_blocks\.\d+\.attn")


def denoiser_sites(adapter: Adapter) -> list[Site]:
    """Every resnet, transformer block and attention module of the denoiser, in the order their outputs are computed
    (measured by one denoising step with forward hooks: a block's output comes after those of its parts)."""
    denoiser, prefix = adapter.denoiser, adapter.denoiser_name
    kinds = {path: kind for path, module in denoiser.named_modules() if (kind := _denoiser_kind(path, module))}
    finished: list[str] = []
    handles = [
        denoiser.get_submodule(path).register_forward_hook(
            lambda module, args, output, path=path: finished.append(path) if path not in finished else None
        )
        for path in kinds
    ]
    try:
        side = adapter.default_settings().height
        adapter.generate(adapter.encode([""]), [0], GenerationSettings(1, 1.0, side, side))
    finally:
        for handle in handles:
            handle.remove()
    return [Site(f"{prefix}.{path}", "denoiser", kinds[path], index) for index, path in enumerate(finished)]


_ENCODER_LAYER = re.compile(r"(?:text_model\.)?encoder\.(?:layers|block)\.(\d+)")
_ENCODER_PARTS = {  # module path suffix -> kind, in the order a layer computes them
    "self_attn": "encoder_attention",
    "layer.0": "encoder_attention",  # CLIP, T5
    "mlp": "encoder_mlp",
    "layer.1": "encoder_mlp",
}


def text_encoder_sites(adapter: Adapter) -> list[Site]:
    """Each text encoder's layers and their attention and MLP parts, encoder by encoder, layer by layer."""
    found = []
    for component in adapter.text_encoder_names:
        layers: dict[int, list[tuple[str, str]]] = {}
        for path, _ in getattr(adapter.pipe, component).named_modules():
            match = _ENCODER_LAYER.fullmatch(path)
            if match:
                layers.setdefault(int(match.group(1)), []).append((path, "encoder_layer"))
                continue
            for suffix, kind in _ENCODER_PARTS.items():
                head, _, tail = path.rpartition(f".{suffix}")
                if not tail and (layer := _ENCODER_LAYER.fullmatch(head)):
                    layers.setdefault(int(layer.group(1)), []).append((path, kind))
        order = {"encoder_attention": 0, "encoder_mlp": 1, "encoder_layer": 2}
        for number in sorted(layers):
            for path, kind in sorted(layers[number], key=lambda item: order[item[1]]):
                found.append((f"{component}.{path}", kind))
    return [Site(name, "text_encoder", kind, index) for index, (name, kind) in enumerate(found)]
