"""Denoiser configs of the real models (values from their published config.json files), for meta-device tests."""

SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

SD21_UNET = {
    **SD15_UNET,
    "sample_size": 96,
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
    "upcast_attention": True,
}

SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}

IF_I_XL_UNET = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 6,
    "layers_per_block": 3,
    "block_out_channels": [512, 1024, 1536, 2048],
    "down_block_types": [
        "ResnetDownsampleBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
    ],
    "up_block_types": [
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "ResnetUpsampleBlock2D",
    ],
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "attention_head_dim": 64,
    "cross_attention_dim": 2048,
    "encoder_hid_dim": 4096,
    "addition_embed_type": "text",
    "addition_embed_type_num_heads": 64,
    "cross_attention_norm": "group_norm",
    "resnet_time_scale_shift": "scale_shift",
    "act_fn": "gelu",
    "class_embed_type": "timestep",
    "mid_block_scale_factor": 1.4142135623730951,
    "time_embedding_act_fn": "gelu",
    "time_embedding_dim": 2048,
    "only_cross_attention": False,
    "dual_cross_attention": False,
}

PIXART_ALPHA_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 28,
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "cross_attention_dim": 1152,
    "caption_channels": 4096,
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "num_embeds_ada_norm": 1000,
    "use_additional_conditions": True,
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
}

# stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json: 24 joint (dual-stream) blocks.
SD3_MEDIUM_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 192,
}

# stabilityai/stable-diffusion-3.5-large, transformer/config.json: 38 joint blocks with RMS-normed queries and keys,
# no image-only second attention (SD3.5-medium's dual_attention_layers).
SD35_LARGE_TRANSFORMER = {
    **SD3_MEDIUM_TRANSFORMER,
    "num_layers": 38,
    "num_attention_heads": 38,
    "caption_projection_dim": 2432,
    "qk_norm": "rms_norm",
    "dual_attention_layers": [],
}

# black-forest-labs/FLUX.1-dev, transformer/config.json: 19 double-stream blocks, then 38 single-stream blocks.
FLUX1_DEV_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}
