"""Architectures of the toy world's pipeline: standard diffusers / transformers classes, tiny configs.

Everything here is built from configs offline; the trained weights come from :mod:`.train`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .world import load_vocab

#: Tokens per caption, including start and end tokens (the longest caption has 13).
MAX_TOKENS = 16
LATENT_CHANNELS = 4
LATENT_SIZE = 8

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    act_fn="silu",
    latent_channels=LATENT_CHANNELS,
    norm_num_groups=8,
    sample_size=32,
    mid_block_add_attention=False,
)

TEXT_CONFIG: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=MAX_TOKENS,
    hidden_act="quick_gelu",
    projection_dim=64,
)

UNET_CONFIG = dict(
    sample_size=LATENT_SIZE,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=64,
    norm_num_groups=16,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="trailing",
    prediction_type="epsilon",
)

DEFAULTS: dict[str, Any] = {"num_inference_steps": 20, "guidance_scale": 3.0, "height": 32, "width": 32}
# What an exported pipeline folder's ``locoedit.json`` says (read by ``locoedit.models`` as ``locoedit.model/1``):
# sample with DEFAULTS, read concepts with the probe, edit with EDIT_TEMPLATES and from-concept rows.
# Edits read the concept and every row after it (the toy CLIP's later rows carry the concept), with templates in the
# toy world's own words (a style is named "in the style of X").
EDIT_TEMPLATES = {
    "object": [
        "a {c}",
        "a red {c} on black",
        "a blue striped {c} on white",
        "a green dotted {c} on gray",
        "a yellow {c} in the style of hokusai",
        "a {c} on white",
    ],
    "style": [
        "a red circle on black {c}",
        "a blue square on white {c}",
        "a green striped triangle on gray {c}",
        "a yellow dotted cross {c}",
        "a striped shape {c}",
        "the sun on black {c}",
    ],
    "fact": [
        "{c}",
        "{c} on black",
        "{c} on white",
        "{c} on gray",
        "{c} in the style of klimt",
        "{c} in the style of hokusai",
    ],
    # Colours and textures are adjectives: the object templates above would make "a red yellow on black".
    "colors": [
        "a {c} shape",
        "a {c} circle on black",
        "a {c} striped square on white",
        "a {c} dotted triangle on gray",
        "a {c} cross in the style of hokusai",
        "a {c} circle on white",
    ],
    "textures": [
        "a {c} shape",
        "a red {c} circle on black",
        "a blue {c} square on white",
        "a green {c} triangle on gray",
        "a yellow {c} cross in the style of klimt",
        "a {c} circle on white",
    ],
}
# What an edit keeps by default: the edited concept's group (the other shapes for a shape), and a general corpus of
# captions from the training distribution (PRESERVATION_CORPUS_SIZE of them, drawn with a fixed seed).
_VOCAB = load_vocab()
NEIGHBOURS = {
    "object": {"shapes": list(_VOCAB.shapes), "colors": list(_VOCAB.colors), "textures": list(_VOCAB.textures)},
    "style": {"styles": [f"in the style of {style}" for style in _VOCAB.styles]},
    "fact": {"facts": list(_VOCAB.facts)},
}
PRESERVATION_CORPUS_FILE = "preservation_corpus.txt"
PRESERVATION_CORPUS_SIZE = 500
MODEL_SETTINGS = {
    "format": "locoedit.model/1",
    "generation": DEFAULTS,
    "scorer": "toyworld",
    "edit": {
        "token": "from-concept",
        "templates": EDIT_TEMPLATES,
        "neighbours": NEIGHBOURS,
        "corpus": PRESERVATION_CORPUS_FILE,
    },
}


def preservation_corpus() -> list[str]:
    """Distinct non-empty captions from the training distribution, in the order drawn (seed 0)."""
    from .world import sample_caption

    rng = np.random.default_rng(0)
    captions: dict[str, None] = {}
    while len(captions) < PRESERVATION_CORPUS_SIZE:
        caption = sample_caption(rng)
        if caption:
            captions[caption] = None
    return list(captions)


def write_model_settings(folder: Path) -> None:
    """``locoedit.json`` and the preservation corpus it names, into a pipeline folder."""
    (folder / "locoedit.json").write_text(json.dumps(MODEL_SETTINGS, indent=2) + "\n")
    (folder / PRESERVATION_CORPUS_FILE).write_text(
        "# Captions from the toy world's training distribution: what a toy-world edit preserves by default.\n"
        + "\n".join(preservation_corpus())
        + "\n"
    )


SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def write_tokenizer_files(folder: Path) -> None:
    """Write a CLIP BPE vocabulary (``vocab.json`` + ``merges.txt``) in which every word of the
    toy world is one token. Characters stay in the vocabulary, so any lowercase text tokenizes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    words = load_vocab().words()
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        min_frequency=1,
        end_of_word_suffix="</w>",
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyz0123456789"),
        show_progress=False,
    )
    tok.train_from_iterator(words, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        for piece in (ch, ch + "</w>"):
            vocab.setdefault(piece, len(vocab))
    for special in SPECIAL_TOKENS:
        vocab[special] = len(vocab)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0, sort_keys=True))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def build_tokenizer(folder: Path):
    """Write the tokenizer files into ``folder`` and load them as a ``CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    write_tokenizer_files(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_TOKENS)
    return tokenizer


def build_text_encoder(tokenizer, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_CONFIG,
    )
    return CLIPTextModel(config)


def build_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**VAE_CONFIG)


def build_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG)


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def load_pipeline(model_dir: Path | None = None):
    """The shipped toy-world pipeline (or one at ``model_dir``), on CPU, progress bar off."""
    from diffusers import StableDiffusionPipeline

    from . import MODEL_DIR

    path = Path(model_dir) if model_dir is not None else MODEL_DIR
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(
            f"no toy-world pipeline at {path}; train one with `python -m locoedit.toyworld.train --install`"
        )
    pipe = StableDiffusionPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_train_scheduler():
    from diffusers import DDPMScheduler

    cfg = {k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one",)}
    return DDPMScheduler(**cfg)


# ----------------------------------------------------------------------------------------------
# Probe network
# ----------------------------------------------------------------------------------------------


class ProbeNet(nn.Module):
    """A small CNN with one classification head per attribute.

    Input: float [N, 3, 32, 32] in [0, 1]. Output: dict attribute -> logits [N, n_values].
    """

    def __init__(self, heads: dict[str, int], width: int = 32):
        super().__init__()
        self.heads_spec = dict(heads)

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            )

        self.body = nn.Sequential(
            block(5, width),
            nn.MaxPool2d(2),  # 16x16
            block(width, 2 * width),
            nn.MaxPool2d(2),  # 8x8
            block(2 * width, 2 * width),
            nn.MaxPool2d(2),  # 4x4
            nn.Flatten(),
            nn.Linear(2 * width * 16, 128),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict({a: nn.Linear(128, n) for a, n in heads.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """What every head reads: [N, 128] for images [N, 3, 32, 32] in [0, 1]."""
        n, _, h, w = images.shape
        # Absolute position helps the style heads (frame, corners) and is cheap.
        ys = torch.linspace(-1, 1, h, device=images.device, dtype=images.dtype)
        xs = torch.linspace(-1, 1, w, device=images.device, dtype=images.dtype)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))  # [2, H, W]
        return self.body(torch.cat([images * 2 - 1, grid.expand(n, 2, h, w)], dim=1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(images)
        return {a: head(feats) for a, head in self.heads.items()}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
