"""Train the toy world's pipeline and probe from a seed.

    python -m locoedit.toyworld.train [--seed 0] [--out DIR] [--threads N] [--minutes M] [--resume] [--install]

Phases, each checkpointed under ``--out`` so that ``--resume`` continues where a run stopped:

1. ``vae``: a tiny AutoencoderKL (32x32x3 <-> 8x8x4) on fresh renders.
2. ``probe``: the probe classifiers on fresh renders, half of them round-tripped through the VAE.
3. ``data``: render a fixed set of scenes and encode them to latents once.
4. ``diffusion``: the CLIP text encoder and the UNet together (epsilon prediction, 10% empty
   captions for classifier-free guidance, an EMA of the weights), with a small prompt-following
   check and an export of the EMA pipeline at every evaluation.

The result is written to ``--out/weights`` (``pipeline/`` with its ``locoedit.json``, ``probe.safetensors``);
``--install`` also copies it into the package (``locoedit/toyworld/weights``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import signal
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import WEIGHTS_DIR
from .evaluate import check_prompt_following, format_table
from .models import (
    DEFAULTS,
    MAX_TOKENS,
    MMDIT_DEFAULTS,
    MMDIT_T5_ROWS,
    CompactRowsProcessor,
    build_flow_scheduler,
    build_mmdit,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_train_scheduler,
    build_unet,
    build_vae,
    count_params,
    load_pipeline,
    sd3_prompt_rows,
    sd3_text_encoder,
    write_model_settings,
)
from .probe import ToyworldProbe
from .world import ATTRIBUTES, caption_for, describe_scene, render_batch, sample_scene

logger = logging.getLogger("locoedit.toyworld.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m locoedit.toyworld.train", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--denoiser",
        choices=("unet", "mmdit"),
        default="unet",
        help="unet: the shipped model (VAE, probe, text encoder and UNet from scratch); mmdit: an SD3 transformer "
        "trained against the VAE, text encoder and probe of --base (frozen), exported as a StableDiffusion3Pipeline",
    )
    p.add_argument("--out", type=Path, default=None, help="checkpoints, logs and weights (toyworld-train[-mmdit])")
    p.add_argument("--base", type=Path, default=WEIGHTS_DIR, help="--denoiser mmdit: the weights it trains against")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--minutes", type=float, default=None, help="stop (checkpoint + export) after this wall time")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--install", action="store_true", help="copy the final weights into the package")
    p.add_argument("--vae-steps", type=int, default=700)
    p.add_argument("--probe-steps", type=int, default=700)
    p.add_argument("--dataset", type=int, default=40000, help="scenes encoded once for the diffusion phase")
    p.add_argument("--steps", type=int, default=5000, help="diffusion training steps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--keep-exports", action="store_true", help="also keep every evaluated export in OUT/exports/")
    p.add_argument(
        "--install-export",
        type=Path,
        default=None,
        help="install this export folder (OUT/export or OUT/exports/step-N) into the package and exit",
    )
    args = p.parse_args(argv)
    if args.out is None:
        args.out = Path("toyworld-train" if args.denoiser == "unet" else "toyworld-train-mmdit")
    return args


class Stopper:
    """Wall-clock budget and SIGTERM/SIGINT: the loops checkpoint and return when ``stop`` is set."""

    def __init__(self, minutes: float | None):
        self.deadline = None if minutes is None else time.monotonic() + 60 * minutes
        self.signalled = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        logger.warning("signal %d: checkpointing and stopping", signum)
        self.signalled = True

    @property
    def stop(self) -> bool:
        return self.signalled or (self.deadline is not None and time.monotonic() > self.deadline)


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


# ----------------------------------------------------------------------------------------------
# Phase 1: VAE
# ----------------------------------------------------------------------------------------------


def resume_phase(path: Path, model: torch.nn.Module, opt, rng: np.random.Generator) -> dict | None:
    """Restore a phase's model, optimizer and sampling RNG from its checkpoint; its contents, or None if absent."""
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    rng.bit_generator.state = state["rng"]
    return state


def train_vae(args, stopper: Stopper):
    path = args.out / "vae.pt"
    vae = build_vae(args.seed).to(args.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    rng = np.random.default_rng([args.seed, 1])
    state = resume_phase(path, vae, opt, rng)
    step = state["step"] if state else 0
    if state and step >= args.vae_steps:
        vae.register_to_config(scaling_factor=state["scaling_factor"])
        return vae.eval(), True
    logger.info("VAE: %d parameters, %d steps at batch %d", count_params(vae), args.vae_steps, args.batch)
    torch.manual_seed(args.seed * 1000 + step)
    last_save = time.monotonic()
    bar = tqdm(range(step, args.vae_steps), initial=step, total=args.vae_steps, desc="vae", mininterval=10)
    for step in bar:
        lr = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / args.vae_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        x = to_unit(render_batch([sample_scene(rng) for _ in range(args.batch)], rng)).to(args.device) * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec = F.mse_loss(recon, x)
        loss = rec + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(mse=f"{rec.item():.5f}", refresh=False)
        done = step + 1
        if stopper.stop or time.monotonic() - last_save > 60 * args.checkpoint_minutes or done == args.vae_steps:
            state = {"model": vae.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state, "step": done}
            if done == args.vae_steps:
                state["scaling_factor"] = latent_scaling_factor(vae, args)
                vae.register_to_config(scaling_factor=state["scaling_factor"])
                logger.info("VAE done: mse %.5f, scaling factor %.4f", rec.item(), state["scaling_factor"])
            atomic_save(state, path)
            last_save = time.monotonic()
            if stopper.stop:
                return vae.eval(), False
    return vae.eval(), True


@torch.no_grad()
def latent_scaling_factor(vae, args) -> float:
    rng = np.random.default_rng([args.seed, 2])
    x = to_unit(render_batch([sample_scene(rng) for _ in range(1024)], rng)).to(args.device) * 2 - 1
    latents = vae.encode(x).latent_dist.mean
    return float(1.0 / latents.std())


@torch.no_grad()
def vae_roundtrip(vae, images: torch.Tensor) -> torch.Tensor:
    """float [N, 3, H, W] in [0, 1] -> its VAE reconstruction, same range."""
    recon = vae.decode(vae.encode(images * 2 - 1).latent_dist.mean).sample
    return ((recon + 1) / 2).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Phase 2: probe
# ----------------------------------------------------------------------------------------------


def scene_targets(scenes: list[dict[str, str]], values: dict[str, tuple[str, ...]]) -> dict[str, torch.Tensor]:
    return {a: torch.tensor([values[a].index(s[a]) for s in scenes]) for a in ATTRIBUTES}


@torch.no_grad()
def probe_accuracy(probe: ToyworldProbe, vae, args, n: int = 2000, roundtrip: bool = False) -> dict[str, float]:
    rng = np.random.default_rng([args.seed, 99 if roundtrip else 98])
    scenes = [sample_scene(rng) for _ in range(n)]
    images = to_unit(render_batch(scenes, rng)).to(args.device)
    if roundtrip:
        images = torch.cat([vae_roundtrip(vae, images[i : i + 256]) for i in range(0, n, 256)])
    pred = probe.predict(images)
    return {a: float(np.mean([p[a] == s[a] for p, s in zip(pred, scenes)])) for a in ATTRIBUTES}


def train_probe(args, vae, stopper: Stopper) -> tuple[ToyworldProbe, bool]:
    path = args.out / "probe.pt"
    probe = ToyworldProbe.create(seed=args.seed)
    net = probe.net.to(args.device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    rng = np.random.default_rng([args.seed, 3])
    state = resume_phase(path, net, opt, rng)
    step = state["step"] if state else 0
    if state and step >= args.probe_steps:
        return ToyworldProbe(net.eval(), probe.values), True
    logger.info("probe: %d parameters, %d steps at batch %d", count_params(net), args.probe_steps, args.batch)
    torch.manual_seed(args.seed * 1000 + 7 + step)
    last_save = time.monotonic()
    bar = tqdm(range(step, args.probe_steps), initial=step, total=args.probe_steps, desc="probe", mininterval=10)
    for step in bar:
        net.train()
        lr = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / args.probe_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        scenes = [sample_scene(rng) for _ in range(args.batch)]
        x = to_unit(render_batch(scenes, rng)).to(args.device)
        half = args.batch // 2
        x[:half] = vae_roundtrip(vae, x[:half])
        x = (x + torch.randn_like(x) * torch.rand(x.shape[0], 1, 1, 1, device=x.device) * 0.05).clamp(0, 1)
        targets = scene_targets(scenes, probe.values)
        logits = net(x)
        loss = typing.cast(
            torch.Tensor, sum(F.cross_entropy(logits[a], targets[a].to(args.device)) for a in ATTRIBUTES)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        done = step + 1
        if stopper.stop or time.monotonic() - last_save > 60 * args.checkpoint_minutes or done == args.probe_steps:
            atomic_save(
                {"model": net.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state, "step": done}, path
            )
            last_save = time.monotonic()
            if stopper.stop and done < args.probe_steps:
                return ToyworldProbe(net.eval(), probe.values), False
    probe = ToyworldProbe(net.eval(), probe.values)
    logger.info("probe accuracy on fresh renders: %s", probe_accuracy(probe, vae, args))
    logger.info("probe accuracy on VAE round-trips: %s", probe_accuracy(probe, vae, args, roundtrip=True))
    return probe, True


# ----------------------------------------------------------------------------------------------
# Phase 3: dataset of latents
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_dataset(args, vae) -> tuple[torch.Tensor, list[dict[str, str]]]:
    path = args.out / "latents.pt"
    if path.exists():
        data = torch.load(path, weights_only=True)
        if data["n"] == args.dataset:
            return data["latents"], data["scenes"]
    rng = np.random.default_rng([args.seed, 4])
    scenes = [sample_scene(rng) for _ in range(args.dataset)]
    chunks = []
    for start in tqdm(range(0, args.dataset, 256), desc="encode", mininterval=10):
        x = to_unit(render_batch(scenes[start : start + 256], rng)).to(args.device) * 2 - 1
        chunks.append(vae.encode(x).latent_dist.mean.cpu())
    latents = torch.cat(chunks)  # [N, 4, 8, 8], unscaled
    atomic_save({"n": args.dataset, "latents": latents, "scenes": scenes}, path)
    return latents, scenes


# ----------------------------------------------------------------------------------------------
# Phase 4: text encoder + UNet
# ----------------------------------------------------------------------------------------------


def make_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]  # diffusers types its pipelines as its dummies
    return pipe


def export(
    pipe, probe: ToyworldProbe, dest: Path, tokenizer_dir: Path, folder: str = "pipeline", generation=None
) -> None:
    """Write ``folder/`` (the pipeline with its ``locoedit.json``) and ``probe.safetensors`` into ``dest`` (replacing)."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pipe.save_pretrained(str(tmp / folder), safe_serialization=True)
    for tokenizer in ("tokenizer", "tokenizer_2"):
        if (tmp / folder / tokenizer).is_dir():
            for name in ("vocab.json", "merges.txt"):  # the BPE files too, for readers without `tokenizers`
                shutil.copy(tokenizer_dir / name, tmp / folder / tokenizer / name)
    probe.save(tmp / "probe.safetensors")
    write_model_settings(tmp / folder, generation)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


@dataclass
class Recipe:
    """What the diffusion phase trains and how; everything else (data, schedule, EMA, checkpoints) is shared.

    ``trained`` maps checkpoint keys to the modules the optimizer updates (their EMA copies are saved as
    ``ema_<key>``); ``loss(x0, ids, gen)`` takes scaled latents [batch, 4, 8, 8] and caption ids [batch, MAX_TOKENS];
    ``sample`` is the EMA pipeline as ``check_prompt_following`` calls it; ``pipe`` is what is exported as ``folder``.
    """

    trained: dict[str, torch.nn.Module]
    ema: dict[str, torch.nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
    pipe: object
    sample: Callable
    folder: str
    tokenizer: typing.Any  # a transformers CLIPTokenizer
    tokenizer_dir: Path
    generation: dict


def unet_recipe(args, vae) -> Recipe:
    """The shipped toy model: the CLIP text encoder and the UNet trained together, epsilon prediction."""
    tokenizer = build_tokenizer(args.out / "tokenizer")
    text_encoder = build_text_encoder(tokenizer, args.seed).to(args.device)
    unet = build_unet(args.seed).to(args.device)
    ema_te, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    noise_sched = build_train_scheduler()
    alphas = noise_sched.alphas_cumprod.to(args.device)

    def loss(x0, ids, gen):
        noise = torch.randn(x0.shape, generator=gen).to(args.device)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (x0.shape[0],), generator=gen).to(args.device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        return F.mse_loss(pred, noise)

    pipe = make_pipeline(vae, ema_te, tokenizer, ema_unet)
    return Recipe(
        trained={"text_encoder": text_encoder, "unet": unet},
        ema={"text_encoder": ema_te, "unet": ema_unet},
        loss=loss,
        pipe=pipe,
        sample=pipe,
        folder="pipeline",
        tokenizer=tokenizer,
        tokenizer_dir=args.out / "tokenizer",
        generation=DEFAULTS,
    )


def load_frozen_parts(base: Path):
    """The shipped pipeline's VAE, tokenizer and text encoder, and the shipped probe: what the MMDiT is trained
    against. The VAE gains ``shift_factor=0`` (StableDiffusion3Pipeline adds it when decoding; the toy VAE has none)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(str(base / "pipeline" / "vae")).eval().requires_grad_(False)
    vae.register_to_config(shift_factor=0.0)
    tokenizer = CLIPTokenizer.from_pretrained(str(base / "pipeline" / "tokenizer"))
    text_encoder = sd3_text_encoder(CLIPTextModel.from_pretrained(str(base / "pipeline" / "text_encoder")))
    return vae, tokenizer, text_encoder, ToyworldProbe.load(base / "probe.safetensors")


def make_sd3_pipeline(vae, text_encoder, tokenizer, transformer):
    """The toy MMDiT as a StableDiffusion3Pipeline: the toy CLIP in both CLIP slots, no T5 (see MMDIT_CONFIG)."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=build_flow_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder,
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]  # diffusers types its pipelines as its dummies
    return pipe


def mmdit_recipe(args, vae, tokenizer, text_encoder) -> Recipe:
    """The toy MMDiT: only the SD3 transformer trains, rectified flow as SD3 (x_t = (1 - s) x0 + s noise, velocity
    target noise - x0, s logit-normal), against the frozen shipped VAE and text encoder.

    Training reads the 16 CLIP rows plus one zero row that stands for the pipeline's MMDIT_T5_ROWS zero rows
    (CompactRowsProcessor): the same function as the pipeline computes, about 4x cheaper here.
    """
    transformer = build_mmdit(args.seed).to(args.device)
    transformer.set_attn_processor(CompactRowsProcessor(MMDIT_T5_ROWS))
    ema = copy.deepcopy(transformer).eval()
    text_encoder = text_encoder.to(args.device)
    pooled_dim = transformer.config.pooled_projection_dim

    def loss(x0, ids, gen):
        with torch.no_grad():
            rows = sd3_prompt_rows(text_encoder, ids)  # [batch, MAX_TOKENS, 128]
            rows = torch.cat([rows, rows.new_zeros(rows.shape[0], 1, rows.shape[2])], dim=1)  # + the T5 stand-in
            pooled = text_encoder(ids).text_embeds.new_zeros(rows.shape[0], pooled_dim)  # zero projection: zeros
        noise = torch.randn(x0.shape, generator=gen).to(args.device)
        sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=gen)).to(args.device)
        s = sigma.view(-1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        pred = transformer(noisy, encoder_hidden_states=rows, pooled_projections=pooled, timestep=sigma * 1000).sample
        return F.mse_loss(pred, noise - x0)

    pipe = make_sd3_pipeline(vae, text_encoder, tokenizer, ema)

    def sample(**kwargs):  # the EMA copy has the compact processors too: one zero row stands for all of them
        return pipe(**kwargs, max_sequence_length=1)

    return Recipe(
        trained={"transformer": transformer},
        ema={"transformer": ema},
        loss=loss,
        pipe=pipe,
        sample=sample,
        folder="mmdit",
        tokenizer=tokenizer,
        tokenizer_dir=args.base / "pipeline" / "tokenizer",
        generation=MMDIT_DEFAULTS,
    )


def export_mmdit(recipe: Recipe, probe, dest: Path) -> None:
    """Export with diffusers' own attention processors (the compact ones are for training only)."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    ema = typing.cast(typing.Any, recipe.ema["transformer"])  # a diffusers model: attn_processors, set_attn_processor
    saved = ema.attn_processors
    ema.set_attn_processor(JointAttnProcessor2_0())
    try:
        export(recipe.pipe, probe, dest, recipe.tokenizer_dir, recipe.folder, recipe.generation)
    finally:
        ema.set_attn_processor(saved)


def train_diffusion(args, recipe: Recipe, probe, latents, scenes, scale: float, stopper: Stopper) -> bool:
    """Train ``recipe`` on the encoded scenes (latents [N, 4, 8, 8] unscaled; ``scale`` is the VAE's factor)."""
    path = args.out / "diffusion.pt"
    params: list[torch.Tensor] = [p for module in recipe.trained.values() for p in module.parameters()]
    ema_params: list[torch.Tensor] = [p for module in recipe.ema.values() for p in module.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    rng = np.random.default_rng([args.seed, 5])
    gen = torch.Generator().manual_seed(args.seed * 1000 + 5)
    step, history = 0, []
    if path.exists():
        state = torch.load(path, weights_only=True)
        for key, module in recipe.trained.items():
            module.load_state_dict(state[key])
            recipe.ema[key].load_state_dict(state["ema_" + key])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state = state["rng"]
        gen.set_state(state["gen"])
        step, history = state["step"], state.get("history", [])
        logger.info("resumed diffusion at step %d", step)
    logger.info(
        "diffusion: %s parameters, %d steps at batch %d",
        ", ".join(f"{key} {count_params(module)}" for key, module in recipe.trained.items()),
        args.steps,
        args.batch,
    )
    warmup = 200
    export_to: typing.Callable | None = export_mmdit if recipe.folder == "mmdit" else None

    def write_export() -> None:
        if export_to is not None:
            export_to(recipe, probe, args.out / "export")
        else:
            export(recipe.pipe, probe, args.out / "export", recipe.tokenizer_dir, recipe.folder, recipe.generation)

    def checkpoint(done: int) -> None:
        state: dict[str, typing.Any] = {key: module.state_dict() for key, module in recipe.trained.items()}
        state.update({"ema_" + key: module.state_dict() for key, module in recipe.ema.items()})
        state.update(opt=opt.state_dict(), rng=rng.bit_generator.state, gen=gen.get_state(), step=done, history=history)
        atomic_save(state, path)

    last_save = time.monotonic()
    t_start, start_step = time.monotonic(), step
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, desc="diffusion", mininterval=10)
    loss_avg = None
    for step in bar:
        for module in recipe.trained.values():
            module.train()
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, latents.shape[0], (args.batch,), generator=gen)
        captions = []
        for i in idx.tolist():
            stated = describe_scene(scenes[i], rng)
            captions.append(caption_for(stated) if stated else "")
        ids = recipe.tokenizer(
            captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids.to(args.device)
        x0 = latents[idx].to(args.device) * scale
        loss = recipe.loss(x0, ids, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        bar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{lr:.1e}", refresh=False)
        done = step + 1
        if done % args.eval_every == 0 or done == args.steps:
            elapsed = time.monotonic() - t_start
            result = check_prompt_following(
                recipe.sample,
                probe,
                seeds=range(32),
                steps=recipe.generation["num_inference_steps"],
                guidance=recipe.generation["guidance_scale"],
            )
            history.append({"step": done, "loss": loss_avg, "accuracy": result["accuracy"]})
            logger.info(
                "step %d (%.2f s/step this run), loss %.4f, quick check (64 images): %s",
                done,
                elapsed / max(1, done - start_step),
                loss_avg,
                {k: round(v, 3) for k, v in result["accuracy"].items()},
            )
            write_export()
            if args.keep_exports:
                kept = args.out / "exports" / f"step-{done:06d}"
                shutil.rmtree(kept, ignore_errors=True)
                shutil.copytree(args.out / "export", kept)
        if stopper.stop or time.monotonic() - last_save > 60 * args.checkpoint_minutes or done == args.steps:
            checkpoint(done)
            last_save = time.monotonic()
            if stopper.stop and done < args.steps:
                write_export()
                return False
    return True


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.install_export is not None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        install_export(args.install_export)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / "train.log")],
    )
    torch.set_num_threads(max(1, args.threads))
    if not args.resume and any(args.out.glob("*.pt")):
        raise SystemExit(f"{args.out} already holds checkpoints; pass --resume to continue or choose another --out")
    logger.info("training the toy world: %s", vars(args))
    stopper = Stopper(args.minutes)
    t0 = time.monotonic()
    if args.denoiser == "unet":
        vae, ok = train_vae(args, stopper)
        if not ok:
            return
        probe, ok = train_probe(args, vae, stopper)
        if not ok:
            return
        latents, scenes = encode_dataset(args, vae)
        recipe = unet_recipe(args, vae)
    else:
        vae, tokenizer, text_encoder, probe = load_frozen_parts(args.base)
        vae = vae.to(args.device)
        latents, scenes = encode_dataset(args, vae)
        recipe = mmdit_recipe(args, vae, tokenizer, text_encoder)
    ok = train_diffusion(args, recipe, probe, latents, scenes, vae.config.scaling_factor, stopper)
    if not ok:
        logger.info("stopped after %.1f min; resume with --resume", (time.monotonic() - t0) / 60)
        return
    weights = args.out / "weights"
    shutil.rmtree(weights, ignore_errors=True)
    shutil.copytree(args.out / "export", weights)
    logger.info("trained in %.1f min (this run); weights in %s", (time.monotonic() - t0) / 60, weights)
    if args.install:
        install(weights, WEIGHTS_DIR, recipe.folder)
        logger.info("installed %s into %s", recipe.folder, WEIGHTS_DIR)
    pipe = load_pipeline(weights / recipe.folder)
    result = check_prompt_following(
        pipe,
        ToyworldProbe.load(weights / "probe.safetensors"),
        steps=recipe.generation["num_inference_steps"],
        guidance=recipe.generation["guidance_scale"],
    )
    logger.info("prompt following (seeds 0-99):\n%s", format_table(result))
    (weights / "check.json").write_text(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))


def install(weights: Path, package: Path, folder: str) -> None:
    """Replace the package's ``folder`` with the trained one; the probe too when the UNet run trained it. The other
    pipeline folders stay: an MMDiT run must not delete the shipped UNet, nor a UNet run the shipped MMDiT.

    The MMDiT's transformer is shipped in float16 (7 MB instead of 14, so that all shipped weights stay under
    25 MB); diffusers and locoedit load it as float32. Its prompt following is measured on these shipped weights.
    """
    package.mkdir(parents=True, exist_ok=True)
    names = [folder, "probe.safetensors"] if folder == "pipeline" else [folder]
    for name in names:
        target = package / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        (shutil.copytree if (weights / name).is_dir() else shutil.copy)(weights / name, target)
    if folder == "mmdit":
        from safetensors.torch import load_file, save_file

        for file in (package / folder / "transformer").glob("*.safetensors"):
            state = load_file(file)
            save_file({key: value.to(torch.float16) for key, value in state.items()}, file, metadata={"format": "pt"})


def install_export(export: Path) -> None:
    """``--install-export``: put an evaluated export (``OUT/export`` or ``OUT/exports/step-N``) into the package."""
    folders = [name for name in ("mmdit", "pipeline") if (export / name / "model_index.json").is_file()]
    if len(folders) != 1 or not (export / "probe.safetensors").is_file():
        raise SystemExit(f"{export} is not an export of this script (one pipeline folder and probe.safetensors)")
    install(export, WEIGHTS_DIR, folders[0])
    logger.info("installed %s from %s into %s", folders[0], export, WEIGHTS_DIR)


if __name__ == "__main__":
    main()
