import pytest
import torch
from diffusers import PixArtTransformer2DModel, UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from locoedit.models import GenerationSettings, real_configs
from locoedit.models.layers import list_cross_attention_layers


def _meta(model_class, config):
    with torch.device("meta"):
        return model_class.from_config(config)


@pytest.mark.parametrize(
    "model_class, config, count, projections",
    [
        (UNet2DConditionModel, real_configs.SD15_UNET, 16, ("to_k", "to_v")),
        (UNet2DConditionModel, real_configs.SD21_UNET, 16, ("to_k", "to_v")),
        (UNet2DConditionModel, real_configs.SDXL_UNET, 70, ("to_k", "to_v")),
        (UNet2DConditionModel, real_configs.IF_I_XL_UNET, 22, ("add_k_proj", "add_v_proj")),
        (PixArtTransformer2DModel, real_configs.PIXART_ALPHA_TRANSFORMER, 28, ("to_k", "to_v")),
    ],
    ids=["sd-1.5", "sd-2.1", "sd-xl", "if-i-xl", "pixart-alpha"],
)
def test_real_layouts_have_the_papers_layer_counts(model_class, config, count, projections):
    layers = list_cross_attention_layers(_meta(model_class, config))
    assert len(layers) == count
    assert [layer.index for layer in layers] == list(range(count))
    assert {layer.edit_projections for layer in layers} == {projections}


def test_sd15_layers_run_down_mid_up_with_numeric_block_order():
    layers = list_cross_attention_layers(_meta(UNet2DConditionModel, real_configs.SD15_UNET))
    blocks = [layer.block for layer in layers]
    assert (
        blocks
        == ["down.0"] * 2 + ["down.1"] * 2 + ["down.2"] * 2 + ["mid"] + ["up.1"] * 3 + ["up.2"] * 3 + ["up.3"] * 3
    )
    resolutions = [64, 64, 32, 32, 16, 16, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64]
    assert [layer.resolution for layer in layers] == resolutions
    assert all(type(layer.resolution) is int for layer in layers)  # written to JSON as 64, not 64.0
    assert layers[6].name == "mid_block.attentions.0.transformer_blocks.0.attn2"
    # A sample_size given as [height, width] (diffusers allows both forms) places the layers the same way.
    listed = list_cross_attention_layers(
        _meta(UNet2DConditionModel, {**real_configs.SD15_UNET, "sample_size": [64, 64]})
    )
    assert [layer.resolution for layer in listed] == resolutions


def test_sdxl_transformer_blocks_are_ordered_numerically():
    layers = list_cross_attention_layers(_meta(UNet2DConditionModel, real_configs.SDXL_UNET))
    down_2 = [layer.name for layer in layers if layer.name.startswith("down_blocks.2.attentions.0.")]
    assert [int(name.split(".")[5]) for name in down_2] == list(range(10))
    assert [layer.block for layer in layers].count("mid") == 10


def test_unet_transformer_blocks_are_ordered_numerically_past_ten():
    # SD-XL's layout with 12 transformer blocks per attention at the deepest level (SD-XL itself stops at 10,
    # blocks 0-9, where string order and numeric order agree): "transformer_blocks.10" must follow ".9", not ".1".
    config = {**real_configs.SDXL_UNET, "transformer_layers_per_block": [1, 2, 12]}
    layers = list_cross_attention_layers(_meta(UNet2DConditionModel, config))
    for prefix in ("down_blocks.2.attentions.0.", "mid_block.attentions.0.", "up_blocks.0.attentions.2."):
        names = [layer.name for layer in layers if layer.name.startswith(prefix)]
        assert names == [f"{prefix}transformer_blocks.{i}.attn2" for i in range(12)], prefix
    assert [layer.index for layer in layers] == list(range(len(layers)))


def test_a_unet_with_twelve_blocks_per_attention_lists_its_layers_in_execution_order():
    """One real forward pass of a small UNet with 12 transformer blocks per attention and 12 attentions per up
    block: the hooks record the order in which the layers run (10 and 11 sort before 2 as strings)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8,),
        layers_per_block=11,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        transformer_layers_per_block=12,
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
    ).eval()
    layers = list_cross_attention_layers(unet)
    assert len(layers) == 11 * 12 + 12 + 12 * 12  # down: 11 attentions, mid: 1, up: layers_per_block + 1 = 12
    ran = []
    hooks = [
        layer.module.register_forward_pre_hook(lambda module, args, index=layer.index: ran.append(index))
        for layer in layers
    ]
    try:
        with torch.no_grad():
            unet(torch.randn(1, 4, 8, 8), 1, encoder_hidden_states=torch.randn(1, 3, 8))
    finally:
        for hook in hooks:
            hook.remove()
    assert ran == list(range(len(layers)))


def test_pixart_blocks_are_ordered_numerically():
    layers = list_cross_attention_layers(_meta(PixArtTransformer2DModel, real_configs.PIXART_ALPHA_TRANSFORMER))
    assert [layer.name for layer in layers] == [f"transformer_blocks.{i}.attn2" for i in range(28)]
    assert {layer.resolution for layer in layers} == {64}  # 128 latent pixels in patches of 2
    assert all(type(layer.resolution) is int and layer.block == "transformer" for layer in layers)


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn2 = Attention(query_dim=8, cross_attention_dim=8, heads=1, dim_head=8)


class _RegisteredOutOfOrder(torch.nn.Module):
    """A DiT-like denoiser whose blocks were registered in the order given, not by number."""

    def __init__(self, order, config):
        super().__init__()
        self.config = config
        self.transformer_blocks = torch.nn.ModuleDict({str(i): _Block() for i in order})


def test_indices_follow_the_block_numbers_not_the_registration_order():
    denoiser = _RegisteredOutOfOrder([2, 10, 0, 11, 1], {"sample_size": 8})
    layers = list_cross_attention_layers(denoiser)
    assert [layer.name for layer in layers] == [f"transformer_blocks.{i}.attn2" for i in (0, 1, 2, 10, 11)]
    assert [layer.module for layer in layers] == [denoiser.transformer_blocks[str(i)].attn2 for i in (0, 1, 2, 10, 11)]
    # Without a patch_size in the config, every latent pixel is a token: the grid is the sample size itself.
    assert {(layer.block, layer.resolution) for layer in layers} == {("transformer", 8)}


def test_a_config_without_sample_size_is_refused_naming_the_layer():
    with pytest.raises(ValueError, match="no sample_size; cannot place layer 'transformer_blocks.0.attn2'"):
        list_cross_attention_layers(_RegisteredOutOfOrder([0], {"patch_size": 2}))


def test_layer_order_matches_execution_order(tiny_adapters):
    """Record which cross-attention modules run, in order, during one real forward pass of each family."""
    for name, adapter in tiny_adapters.items():
        ran = []
        hooks = [
            layer.module.register_forward_pre_hook(lambda module, args, index=layer.index: ran.append(index))
            for layer in adapter.layers
        ]
        try:
            adapter.generate(adapter.encode(["a red circle"]), [0], GenerationSettings(1, 1.0, 16, 16))
        finally:
            for hook in hooks:
                hook.remove()
        assert ran == list(range(len(adapter.layers))), name


def test_a_denoiser_without_text_is_refused():
    from diffusers import UNet2DModel

    with pytest.raises(ValueError, match="UNet2DModel has no cross-attention layers"):
        list_cross_attention_layers(
            UNet2DModel(
                block_out_channels=(8, 8),
                norm_num_groups=4,
                sample_size=8,
                down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"),
            )
        )
