"""The toy MMDiT: an SD3 transformer trained on the toy world against the shipped VAE, text encoder and probe."""

import signal

import pytest
import torch

torch.set_num_threads(1)

from locoedit.toyworld import WEIGHTS_DIR, train
from locoedit.toyworld.models import (
    MAX_TOKENS,
    MMDIT_T5_ROWS,
    CompactRowsProcessor,
    build_mmdit,
    sd3_prompt_rows,
)


@pytest.fixture
def stopper_signals():
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])


def test_one_weighted_row_computes_what_the_pipelines_zero_rows_compute():
    """Training reads 16 CLIP rows + 1 zero row weighted as 256; the pipeline hands 16 + 256 zero rows."""
    model = build_mmdit(0, num_layers=3).eval()
    with torch.no_grad():
        for p in model.parameters():  # diffusers zero-initialises nothing here, but make every path non-trivial
            p.add_(torch.randn_like(p) * 0.05)
        x, clip = torch.randn(2, 4, 8, 8), torch.randn(2, MAX_TOKENS, 128)
        pooled, t = torch.zeros(2, 128), torch.tensor([300.0, 700.0])
        full = torch.cat([clip, torch.zeros(2, MMDIT_T5_ROWS, 128)], dim=1)
        stock = model(x, encoder_hidden_states=full, pooled_projections=pooled, timestep=t).sample
        model.set_attn_processor(CompactRowsProcessor(MMDIT_T5_ROWS))
        compact = model(x, encoder_hidden_states=full[:, : MAX_TOKENS + 1], pooled_projections=pooled, timestep=t)
    torch.testing.assert_close(compact.sample, stock, atol=2e-5, rtol=1e-5)


def test_training_encodes_prompts_as_the_sd3_pipeline_does():
    vae, tokenizer, text_encoder, _ = train.load_frozen_parts(WEIGHTS_DIR)
    pipe = train.make_sd3_pipeline(vae, text_encoder, tokenizer, build_mmdit(0, num_layers=1))
    prompts = ["a red striped circle on black", ""]
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=False)
        ids = tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
        rows = sd3_prompt_rows(text_encoder, ids)
    assert embeds.shape == (2, MAX_TOKENS + MMDIT_T5_ROWS, 128)
    torch.testing.assert_close(embeds[:, :MAX_TOKENS], rows)
    assert not embeds[:, MAX_TOKENS:].any()  # no T5: zero rows
    assert not pooled.any()  # zero projection: the text reaches the image only through joint attention
    assert pipe.vae.config.shift_factor == 0.0


def test_mmdit_training_stops_and_resumes_exactly(tmp_path, stopper_signals, monkeypatch):
    monkeypatch.setattr(train, "check_prompt_following", lambda *a, **k: {"accuracy": {}})
    common = ["--denoiser", "mmdit", "--threads", "1", "--device", "cpu", "--batch", "2", "--dataset", "16"]
    common += ["--steps", "3", "--eval-every", "100"]

    def run(out, minutes):
        args = train.parse_args(["--out", str(out), *common])
        args.out.mkdir(parents=True, exist_ok=True)
        vae, tokenizer, text_encoder, probe = train.load_frozen_parts(args.base)
        latents, scenes = train.encode_dataset(args, vae)
        recipe = train.mmdit_recipe(args, vae, tokenizer, text_encoder)
        return train.train_diffusion(
            args, recipe, probe, latents, scenes, vae.config.scaling_factor, train.Stopper(minutes)
        )

    assert run(tmp_path / "straight", None)
    assert not run(tmp_path / "stopped", 0)  # out of time after its first step: checkpoint, export, stop
    first = torch.load(tmp_path / "stopped" / "diffusion.pt", weights_only=True)
    assert first["step"] == 1
    assert (tmp_path / "stopped" / "export" / "mmdit" / "model_index.json").is_file()
    assert run(tmp_path / "stopped", None)  # resumed for the two steps left
    a = torch.load(tmp_path / "straight" / "diffusion.pt", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "diffusion.pt", weights_only=True)
    assert a["step"] == b["step"] == 3
    for key in ("transformer", "ema_transformer"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key


def test_the_exported_folder_is_a_plain_sd3_pipeline(tmp_path, stopper_signals, monkeypatch):
    from locoedit.toyworld.models import load_pipeline

    monkeypatch.setattr(train, "check_prompt_following", lambda *a, **k: {"accuracy": {}})
    args = train.parse_args(["--denoiser", "mmdit", "--out", str(tmp_path), "--threads", "1", "--device", "cpu"])
    vae, tokenizer, text_encoder, probe = train.load_frozen_parts(args.base)
    recipe = train.mmdit_recipe(args, vae, tokenizer, text_encoder)
    with torch.no_grad():
        for p in recipe.ema["transformer"].parameters():
            p.add_(torch.randn_like(p) * 0.02)
    train.export_mmdit(recipe, probe, tmp_path / "export")
    assert (
        type(recipe.ema["transformer"].attn_processors["transformer_blocks.0.attn.processor"]) is CompactRowsProcessor
    )
    pipe = load_pipeline(tmp_path / "export" / "mmdit")
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and pipe.text_encoder_3 is None
    assert (tmp_path / "export" / "mmdit" / "locoedit.json").is_file()
    assert (tmp_path / "export" / "probe.safetensors").is_file()
    kwargs = dict(prompt=["the sun on gray"], num_inference_steps=2, guidance_scale=3.0, output_type="pt")
    plain = pipe(**kwargs, generator=[torch.Generator().manual_seed(0)]).images  # 256 zero T5 rows, stock attention
    compact = recipe.sample(**kwargs, generator=[torch.Generator().manual_seed(0)]).images  # as training checks
    assert plain.shape == (1, 3, 32, 32)
    torch.testing.assert_close(plain, compact, atol=1e-4, rtol=0)


def test_installing_an_export_keeps_the_other_pipeline_and_ships_the_transformer_in_float16(tmp_path, monkeypatch):
    from locoedit.toyworld.models import load_pipeline

    monkeypatch.setattr(train, "check_prompt_following", lambda *a, **k: {"accuracy": {}})
    args = train.parse_args(["--denoiser", "mmdit", "--out", str(tmp_path), "--threads", "1", "--device", "cpu"])
    vae, tokenizer, text_encoder, probe = train.load_frozen_parts(args.base)
    recipe = train.mmdit_recipe(args, vae, tokenizer, text_encoder)
    train.export_mmdit(recipe, probe, tmp_path / "export")
    package = tmp_path / "package"
    (package / "pipeline").mkdir(parents=True)
    (package / "pipeline" / "model_index.json").write_text("{}")  # stands for the shipped UNet
    train.install(tmp_path / "export", package, "mmdit")
    assert (package / "pipeline" / "model_index.json").read_text() == "{}"
    assert not (package / "probe.safetensors").exists()  # the MMDiT run trains no probe: the shipped one stays
    from safetensors.torch import load_file

    (weights,) = (package / "mmdit" / "transformer").glob("*.safetensors")
    assert {t.dtype for t in load_file(weights).values()} == {torch.float16}
    pipe = load_pipeline(package / "mmdit")
    assert pipe.transformer.dtype == torch.float32
    ema = recipe.ema["transformer"].state_dict()
    for name, value in pipe.transformer.state_dict().items():
        torch.testing.assert_close(value, ema[name].half().float(), atol=0, rtol=0)
