"""SD3 and FLUX adapters: tiny offline pipelines, layer tables of joint attention, loading, refusals."""

import json

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from locoedit.core.errors import LocoeditError
from locoedit.core.formats import from_plain, to_plain
from locoedit.models import GenerationSettings, adapter_for, check_model, load_adapter, real_configs
from locoedit.models.layers import LayerInfo, list_cross_attention_layers
from locoedit.testing import JOINT_PIPELINES, tiny_stable_diffusion_3

SETTINGS = GenerationSettings(3, 4.0, 16, 16)


@pytest.fixture(scope="module")
def joint_adapters(tmp_path_factory):
    adapters = {name: adapter_for(build(tmp_path_factory.mktemp(name))) for name, build in JOINT_PIPELINES.items()}
    adapters["sd3"].t5_rows = 16  # the pipeline's 256 T5 rows are many for a 4-block test model
    adapters["flux"].text_max_length = 16
    return adapters


def _meta(model_class, config):
    with torch.device("meta"):
        return model_class.from_config(config)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_tiny_joint_pipelines_build_offline_and_generate(joint_adapters, family):
    adapter = joint_adapters[family]
    steps = []
    images = adapter.generate(
        adapter.encode(["a red circle", "a house"]), [0, 1], SETTINGS, on_step=lambda: steps.append(1)
    )
    assert len(steps) == 3
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1 and images.std() > 0.01
    again = adapter.generate(adapter.encode(["a red circle"]), [0], SETTINGS)
    torch.testing.assert_close(again[0], images[0], atol=1e-5, rtol=0)  # a row depends on its own seed only


@pytest.mark.parametrize(
    "family, blocks, streams, projections",
    [
        ("sd3", [f"joint.{i}" for i in range(4)], ["dual"] * 4, [("add_k_proj", "add_v_proj")] * 4),
        (
            "flux",
            ["joint.0", "joint.1", "single.0", "single.1", "single.2"],
            ["dual"] * 2 + ["single"] * 3,
            [("add_k_proj", "add_v_proj")] * 2 + [("to_k", "to_v")] * 3,
        ),
    ],
)
def test_joint_layer_tables_list_the_blocks_in_execution_order(joint_adapters, family, blocks, streams, projections):
    adapter = joint_adapters[family]
    layers = adapter.layers
    assert [layer.block for layer in layers] == blocks
    assert [layer.stream for layer in layers] == streams
    assert [layer.edit_projections for layer in layers] == projections
    ran = []
    hooks = [
        layer.module.register_forward_pre_hook(lambda module, args, index=layer.index: ran.append(index))
        for layer in layers
    ]
    try:
        adapter.generate(adapter.encode(["a red circle"]), [0], GenerationSettings(1, 4.0, 16, 16))
    finally:
        for hook in hooks:
            hook.remove()
    assert ran == list(range(len(layers)))  # the table's numbering is the order the blocks run in


@pytest.mark.parametrize(
    "model_class, config, dual, single",
    [
        (SD3Transformer2DModel, real_configs.SD3_MEDIUM_TRANSFORMER, 24, 0),
        (SD3Transformer2DModel, real_configs.SD35_LARGE_TRANSFORMER, 38, 0),
        (FluxTransformer2DModel, real_configs.FLUX1_DEV_TRANSFORMER, 19, 38),
    ],
    ids=["sd3-medium", "sd3.5-large", "flux.1-dev"],
)
def test_real_joint_layouts_on_the_meta_device(model_class, config, dual, single):
    layers = list_cross_attention_layers(_meta(model_class, config))
    assert [layer.stream for layer in layers] == ["dual"] * dual + ["single"] * single
    assert [layer.index for layer in layers] == list(range(dual + single))
    assert layers[dual - 1].name == f"transformer_blocks.{dual - 1}.attn"
    if single:
        assert [layer.name for layer in layers[dual:]] == [f"single_transformer_blocks.{i}.attn" for i in range(single)]
        assert {layer.resolution for layer in layers} == {0}  # FLUX: no fixed grid (rotary positions)
    else:
        assert {layer.resolution for layer in layers} == {64}  # 128 latents in 2x2 patches


def test_sd35_image_only_second_attention_is_not_a_text_layer():
    config = {**real_configs.SD3_MEDIUM_TRANSFORMER, "dual_attention_layers": [0, 1, 2]}  # SD3.5-medium's kind
    layers = list_cross_attention_layers(_meta(SD3Transformer2DModel, config))
    assert len(layers) == 24 and all(layer.name.endswith(".attn") for layer in layers)


def test_layer_files_from_before_joint_attention_still_load():
    old = {"index": 3, "name": "down_blocks.1.attentions.0.transformer_blocks.0.attn2", "block": "down.1"}
    old.update(resolution=32, edit_projections=["to_k", "to_v"])  # no "stream": written before it existed
    layer = from_plain(LayerInfo, old, "layers[0]")
    assert layer.stream == "cross"
    assert from_plain(LayerInfo, to_plain(layer), "layers[0]") == layer
    with pytest.raises(ValueError, match="stream 'triple' is not one of cross, dual, single"):
        LayerInfo(0, "x", "joint.0", 4, ("add_k_proj", "add_v_proj"), "triple")


def test_an_sd3_folder_saved_without_t5_loads_by_path(tmp_path):
    pipe = tiny_stable_diffusion_3(tmp_path / "build")
    pipe.text_encoder_3, pipe.tokenizer_3 = None, None  # what the toy MMDiT and T5-less SD3 folders look like
    pipe.register_to_config(text_encoder_3=(None, None), tokenizer_3=(None, None))
    pipe.save_pretrained(tmp_path / "folder")
    assert json.loads((tmp_path / "folder" / "model_index.json").read_text())["text_encoder_3"] == [None, None]
    assert check_model(str(tmp_path / "folder")) == "StableDiffusion3Pipeline"
    adapter = load_adapter(str(tmp_path / "folder"), device="cpu")
    assert type(adapter).__name__ == "StableDiffusion3Adapter" and adapter.pipe.text_encoder_3 is None
    encoded = adapter.encode(["a red circle"])
    assert encoded.conditional.embeds.shape == (1, 16 + 1, 32)  # one zero row for the T5 rows (see below)
    assert not encoded.conditional.embeds[:, 16:].any()


def test_an_unsupported_pipeline_family_is_one_clear_error(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    pipe = DDPMPipeline(unet, DDPMScheduler())
    with pytest.raises(LocoeditError, match="DDPMPipeline, which locoedit does not support") as error:
        adapter_for(pipe)
    assert "StableDiffusion3Pipeline" in str(error.value) and "FluxPipeline" in str(error.value)
    folder = tmp_path / "aura"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "AuraFlowPipeline"}))
    with pytest.raises(LocoeditError, match="AuraFlowPipeline, which locoedit does not support; supported"):
        check_model(str(folder))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_joint_adapters_refuse_a_single_set_of_text_states(joint_adapters, family):
    adapter = joint_adapters[family]
    with pytest.raises(LocoeditError, match="own text stream, which depends on the block and the timestep"):
        adapter.attention_states(adapter.encode(["a red circle"]).conditional)


def test_flux_rows_are_t5_tokens_and_long_prompts_are_refused(joint_adapters):
    adapter = joint_adapters["flux"]
    tokens = adapter.tokenize("a red circle")
    assert tokens.rows == 16 and tokens.length == 4  # three words and T5's end token, no start token
    assert tokens.phrase_positions("circle") == [2]
    with pytest.raises(LocoeditError, match="the text encoder reads at most 16"):
        adapter.encode([" ".join(["red"] * 20)])


def test_sd3_refuses_a_prompt_its_t5_rows_would_cut(joint_adapters, monkeypatch):
    adapter = joint_adapters["sd3"]
    monkeypatch.setattr(adapter, "t5_rows", 5)
    adapter.check_length("a red circle")  # 4 T5 tokens, 5 CLIP tokens: both fit
    with pytest.raises(LocoeditError, match="has 7 T5 tokens but SD3 reads at most 5"):
        adapter.check_length("a red circle on a house")


def test_without_t5_one_weighted_row_stands_for_the_pipelines_zero_rows(tmp_path):
    """The pipeline appends 256 identical zero rows when it has no T5; the adapter encodes one and weights it as
    256 while it generates: the pipeline's own images, about 4x cheaper. Diffusers' processors are back afterwards,
    and a pipeline with processors of its own gets all the rows."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    pipe = tiny_stable_diffusion_3(tmp_path)
    pipe.text_encoder_3, pipe.tokenizer_3 = None, None
    adapter = adapter_for(pipe)
    encoded = adapter.encode(["a red circle", "a house"])
    assert encoded.conditional.embeds.shape == (2, 16 + 1, 32) and adapter.t5_rows == 256
    images = adapter.generate(encoded, [0, 1], SETTINGS)
    assert all(type(p) is JointAttnProcessor2_0 for p in adapter.denoiser.attn_processors.values())
    reference = pipe(
        prompt=["a red circle", "a house"],
        generator=[torch.Generator().manual_seed(seed) for seed in (0, 1)],
        num_inference_steps=3,
        guidance_scale=4.0,
        height=16,
        width=16,
        output_type="pt",
    ).images  # 16 CLIP rows + 256 zero rows, diffusers' own attention
    torch.testing.assert_close(images, reference, atol=1e-5, rtol=0)

    class Custom(JointAttnProcessor2_0):  # a processor of the user's: the adapter must not replace it
        pass

    adapter.denoiser.set_attn_processor(Custom())
    try:
        assert adapter.encode(["a red circle"]).conditional.embeds.shape == (1, 16 + 256, 32)
    finally:
        adapter.denoiser.set_attn_processor(JointAttnProcessor2_0())
