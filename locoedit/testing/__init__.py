"""Tiny, seeded, offline pipelines of every supported family, built from configs with random weights.

Used by the test suite and the benchmarks; also handy for trying locoedit without any weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Words that get a single token each in the tiny CLIP tokenizer, so that token-level choices are testable.
TINY_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "style",
    "photo",
    "painting",
    "picture",
    "image",
    "house",
    "dog",
    "cat",
    "car",
    "tree",
    "van",
    "gogh",
    "monet",
    "picasso",
    "red",
    "green",
    "blue",
    "yellow",
    "circle",
    "square",
]


def _bytes_to_unicode() -> dict[int, str]:
    # The byte -> printable-character table that CLIP's BPE works on.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_clip_tokenizer(folder: str | Path, words=TINY_WORDS, max_length: int = 16) -> Path:
    """A CLIP BPE tokenizer whose vocabulary is every byte plus ``words`` as whole tokens."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab: list[str] = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            rule = f"{merged} {piece}"
            merged += piece
            if rule not in merges:
                merges.append(rule)
            if merged not in vocab:
                vocab.append(merged)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": max_length, "tokenizer_class": "CLIPTokenizer", "pad_token": "<|endoftext|>"})
    )
    return folder


def _clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder))


def _clip_text_config(hidden: int, vocab_size: int, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=projection or hidden,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def _tiny_vae(**extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        **extra,
        block_out_channels=(8, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )


def _t5(folder: Path, d_model: int = 16):
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -1.0) for w in TINY_WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    config = T5Config(vocab_size=len(pieces), d_model=d_model, d_kv=8, d_ff=32, num_layers=2, num_heads=2)
    return tokenizer, T5EncoderModel(config).eval()


def tiny_stable_diffusion(folder: str | Path, seed: int = 0):
    """SD-1.x layout: 2 down, 1 mid and 4 up cross-attention layers on CLIP text; 16x16 images."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer(Path(folder) / "tokenizer")
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    text_encoder = CLIPTextModel(_clip_text_config(16, len(tokenizer))).eval()
    return StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_stable_diffusion_xl(folder: str | Path, seed: int = 0):
    """SD-XL layout: two CLIP encoders (8 + 16 = 24-d states), 2 transformer blocks per layer, pooled text."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer(Path(folder) / "tokenizer")
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        transformer_layers_per_block=(1, 2),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=24,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=16 + 6 * 4,
        norm_num_groups=4,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_clip_text_config(8, len(tokenizer))).eval(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(16, len(tokenizer))).eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1),
        add_watermarker=False,
    )


def tiny_deepfloyd_if(folder: str | Path, seed: int = 0):
    """DeepFloyd IF stage I layout: T5 text, added-K/V attention with group-normed text, pixel space 16x16."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer, text_encoder = _t5(Path(folder))
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=3,
        out_channels=6,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        cross_attention_dim=32,
        attention_head_dim=4,
        encoder_hid_dim=16,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        norm_num_groups=4,
    )
    scheduler = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.0,
        prediction_type="epsilon",
        variance_type="learned_range",
    )
    return IFPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )


def tiny_pixart_alpha(folder: str | Path, seed: int = 0):
    """PixArt-alpha layout: a 4-block DiT over 2x2 patches of 8x8 latents, T5 text with a mask."""
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    tokenizer, text_encoder = _t5(Path(folder))
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=4,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_channels=16,
        in_channels=4,
        out_channels=8,
        cross_attention_dim=16,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        num_embeds_ada_norm=1000,
        use_additional_conditions=False,
    )
    return PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_tiny_vae(),
        transformer=transformer,
        scheduler=DDIMScheduler(steps_offset=1),
    )


def tiny_stable_diffusion_3(folder: str | Path, seed: int = 0):
    """SD3 layout: 4 joint (dual-stream) blocks over 2x2 patches of 8x8 latents, image rows then text rows; two CLIP
    encoders (8 + 16 = 24-d states, padded to T5's 32) and T5 (32-d), pooled CLIP text (8 + 16 = 24-d); 16x16 images.
    The pipeline appends ``max_sequence_length`` T5 rows (256 by default) to the 16 CLIP rows."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer(Path(folder) / "tokenizer")
    t5_tokenizer, t5 = _t5(Path(folder), d_model=32)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=4,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=24,
        pos_embed_max_size=8,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae(shift_factor=0.0),
        text_encoder=CLIPTextModelWithProjection(_clip_text_config(8, len(tokenizer))).eval(),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(16, len(tokenizer))).eval(),
        tokenizer_2=tokenizer,
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer,
    )


def tiny_flux(folder: str | Path, seed: int = 0):
    """FLUX.1-dev layout: 2 double-stream blocks then 3 single-stream blocks, text rows then image rows, rotary
    positions; T5 rows (16-d) for attention, pooled CLIP (16-d) and the distilled guidance for the time embedding;
    8x8 latents packed into 2x2 patches; 16x16 images."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer(Path(folder) / "tokenizer")
    t5_tokenizer, t5 = _t5(Path(folder))
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=3,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=16,
        guidance_embeds=True,
        axes_dims_rope=[2, 2, 4],
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_vae(shift_factor=0.0),
        text_encoder=CLIPTextModel(_clip_text_config(16, len(tokenizer))).eval(),
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


def tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """A tiny random-weight transformers CLIP with its tokenizer, saved like a checkpoint (for ``clip:FOLDER``)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder))
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=len(tokenizer) - 2,
            eos_token_id=len(tokenizer) - 1,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(folder)
    return folder


TINY_PIPELINES = {
    "sd": tiny_stable_diffusion,
    "sdxl": tiny_stable_diffusion_xl,
    "if": tiny_deepfloyd_if,
    "pixart": tiny_pixart_alpha,
}

# Joint-attention families (the text joins the image rows in every block). Kept apart from TINY_PIPELINES, which the
# cross-attention tests run on every family of: their rows are captured while generating (tests/edit/test_joint_edit.py).
JOINT_PIPELINES = {
    "sd3": tiny_stable_diffusion_3,
    "flux": tiny_flux,
}


def lora_images(adapter, delta, lora_path: str | Path, prompts=("a red circle on black", "a house"), seeds=(0, 1)):
    """Images of ``prompts`` (from ``seeds``) before the edit, with ``delta`` applied, and with the LoRA file at
    ``lora_path`` loaded by the pipeline's own ``load_lora_weights`` (unloaded afterwards): [images, 3, H, W] x3."""
    encoded = adapter.encode(list(prompts))
    settings = adapter.default_settings()
    before = adapter.generate(encoded, list(seeds), settings)
    with delta.installed(adapter):
        applied = adapter.generate(encoded, list(seeds), settings)
    adapter.pipe.load_lora_weights(str(lora_path))
    try:
        loaded = adapter.generate(encoded, list(seeds), settings)
    finally:
        adapter.pipe.unload_lora_weights()
    return before, applied, loaded
