"""Causal tracing: a hand-written golden reference, the properties of the effect, every family, and bad input."""

import json

import pytest
import torch

torch.set_num_threads(1)

from typer.testing import CliRunner

from locoedit.cli import app
from locoedit.core.errors import LocoeditError
from locoedit.models import GenerationSettings
from locoedit.scoring import PixelScorer
from locoedit.trace import TraceRequest, TraceResult, denoiser_sites, trace
from locoedit.trace.tracing import Tracer

SETTINGS = GenerationSettings(3, 4.0, 16, 16)
PROMPT = "a house in the style of van gogh"


def request(**changes):
    fields = dict(
        model="tiny",
        prompts=(PROMPT,),
        concept="van gogh",
        seeds=(0, 1),
        steps=3,
        guidance=4.0,
        height=16,
        width=16,
        noise=3.0,
    )
    return TraceRequest(**{**fields, **changes})


def test_golden_reference_hand_written_patching_loop(tiny_adapters):
    """By hand: noise on the concept's token embeddings, a plain DDIM loop, and one block's clean output written back
    at every step; the library's restored image for that site must match."""
    adapter = tiny_adapters["sd"]
    pipe, seed = adapter.pipe, 0
    site = "up_blocks.0.resnets.0"
    req = request(seeds=(seed,), sites=(f"unet.{site}",), parts=("denoiser",))
    tracer = Tracer(req, adapter, PixelScorer(), None)
    scores, images = tracer.run([s for s in denoiser_sites(adapter) if s.name == f"unet.{site}"])
    library = images[f"unet.{site}"][0]

    tokens = adapter.tokenize(PROMPT)
    positions = tokens.phrase_positions("van gogh")
    embedding = pipe.text_encoder.get_input_embeddings()
    sigma = 3.0 * embedding.weight.detach().float().std().item()
    noise = torch.randn(
        len(positions), embedding.weight.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )

    def encode(corrupt):
        ids = pipe.tokenizer(
            PROMPT,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        empty = pipe.tokenizer(
            "", padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
        ).input_ids

        def add(module, args, output):
            if corrupt and torch.equal(args[0], ids):
                output = output.clone()
                output[0, positions] += (sigma * noise).float()
            return output

        handle = embedding.register_forward_hook(add)
        try:
            with torch.no_grad():
                return torch.cat([pipe.text_encoder(empty)[0], pipe.text_encoder(ids)[0]])
        finally:
            handle.remove()

    def loop(text, replace_with=None):
        recorded, calls = [], [0]
        module = pipe.unet.get_submodule(site)

        def hook(m, args, output):
            if replace_with is None:
                recorded.append(output.detach().clone())
                return output
            calls[0] += 1
            return replace_with[calls[0] - 1]

        handle = module.register_forward_hook(hook)
        try:
            scheduler = pipe.scheduler
            scheduler.set_timesteps(SETTINGS.num_inference_steps)
            latents = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(seed))
            latents = latents * scheduler.init_noise_sigma
            with torch.no_grad():
                for t in scheduler.timesteps:
                    model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
                    uncond, cond = pipe.unet(model_input, t, encoder_hidden_states=text).sample.chunk(2)
                    latents = scheduler.step(uncond + SETTINGS.guidance_scale * (cond - uncond), t, latents).prev_sample
                image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        finally:
            handle.remove()
        return (image / 2 + 0.5).clamp(0, 1)[0], recorded

    clean, recorded = loop(encode(corrupt=False))
    corrupted, _ = loop(encode(corrupt=True))
    restored, _ = loop(encode(corrupt=True), replace_with=recorded)
    assert (images["clean"][0] - clean).abs().max() < 1e-5 and (images["corrupted"][0] - corrupted).abs().max() < 1e-5
    assert (library - restored).abs().max() < 1e-5
    assert (corrupted - clean).abs().max() > 1e-3  # the corruption really changes the image


@pytest.mark.parametrize("family", ["sd", "sdxl", "if", "pixart"])
def test_restoring_the_last_denoiser_site_gives_the_clean_image_and_nothing_the_corrupted(tiny_adapters, family):
    adapter = tiny_adapters[family]
    last = denoiser_sites(adapter)[-1]
    req = request(sites=(last.name,), parts=("denoiser",))
    tracer = Tracer(req, adapter, PixelScorer(), None)
    scores, images = tracer.run([last])
    assert (images[last.name] - images["clean"]).abs().max() < 1e-5  # effect 1
    assert (images["corrupted"] - images["clean"]).abs().max() > 1e-4  # the gap is real
    result = trace(req, None, adapter, PixelScorer())
    assert result.sites[0].effect == pytest.approx(1.0, abs=1e-4)
    assert result.corrupted_score < result.clean_score == 0.0  # pixel score: minus the distance to the clean image


def test_zero_noise_gives_a_gap_of_zero_and_no_division(tiny_adapters):
    adapter = tiny_adapters["sd"]
    result = trace(request(noise=0.0, parts=("denoiser",)), None, adapter, PixelScorer())
    assert result.gap == 0.0 and result.clean_score == result.corrupted_score
    assert all(site.effect is None for site in result.sites) and "gap 0" in result.note


def test_text_encoder_sites_and_the_run_folder(tiny_adapters, tmp_path):
    adapter = tiny_adapters["sd"]
    result = trace(request(), tmp_path / "run", adapter, PixelScorer())
    parts = {site.part for site in result.sites}
    assert parts == {"denoiser", "text_encoder"}
    encoder = [s for s in result.sites if s.part == "text_encoder"]
    assert [s.index for s in encoder] == list(range(len(encoder))) and all(s.effect is not None for s in encoder)
    data = json.loads((tmp_path / "run" / "trace.json").read_text())
    assert data["format"] == "locoedit.trace/1" and TraceResult.load(tmp_path / "run") == result
    assert {"name", "part", "index", "effect", "effect_std"} <= set(data["sites"][0])
    for paths in (result.images.clean, result.images.corrupted, *result.images.restored.values()):
        assert all((tmp_path / "run" / p).is_file() for p in paths)
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count("<svg") == 2 and "Text-encoder sites" in html


def test_the_model_concept_scorer_and_the_cli(tiny_sd_folder, tiny_clip_folder, tmp_path):
    out = tmp_path / "t"
    result = CliRunner().invoke(
        app,
        [
            "trace",
            str(tiny_sd_folder),
            "--prompt",
            PROMPT,
            "--concept",
            "van gogh",
            "--scorer",
            f"clip:{tiny_clip_folder}",
            "--seeds",
            "0",
            "--steps",
            "2",
            "--size",
            "16",
            "--part",
            "text_encoder",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "trace.json").read_text())["request"]["scorer"] == f"clip:{tiny_clip_folder}"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(concept="monet"), "'monet' is not among the tokens of prompt"),
        (dict(noise=-1.0), "noise must be a finite number >= 0"),
        (dict(noise=float("nan")), "noise must be a finite number >= 0"),
        (dict(sites=("unet.down_blocks.9",)), "unknown site(s) unet.down_blocks.9"),
        (dict(parts=("vae",)), "parts ['vae'] must be some of"),
        (dict(prompts=("",)), "non-empty --prompt"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_adapters, tmp_path, changes, message):
    with pytest.raises(LocoeditError) as error:
        trace(request(**changes), tmp_path / "run", tiny_adapters["sd"], PixelScorer())
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("family, encoders, layers", [("sd", 1, 2), ("sdxl", 2, 2), ("if", 1, 2), ("pixart", 1, 2)])
def test_text_encoder_sites_in_every_family(tiny_adapters, family, encoders, layers):
    """Each encoder's layers, with their attention and MLP parts (SD-XL: both CLIP encoders; IF, PixArt: T5)."""
    result = trace(
        request(parts=("text_encoder",), seeds=(0,), restore_tokens="all"), None, tiny_adapters[family], PixelScorer()
    )
    assert len(result.sites) == encoders * layers * 3
    assert {s.kind for s in result.sites} == {"encoder_layer", "encoder_attention", "encoder_mlp"}
    assert result.gap > 0 and all(s.effect is not None for s in result.sites)
    assert set(result.noise_sigma) == set(tiny_adapters[family].text_encoder_names)


def test_a_weak_corruption_is_noted(tiny_adapters, tiny_clip_folder):
    from locoedit.scoring import make_scorer

    result = trace(
        request(noise=1e-3, parts=("denoiser",), sites=("unet.up_blocks.0.resnets.0",)),
        None,
        tiny_adapters["sd"],
        make_scorer(f"clip:{tiny_clip_folder}"),
    )
    assert 0 < abs(result.gap) < 0.1 * abs(result.clean_score) and "raise --noise" in result.note
