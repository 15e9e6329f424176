"""Architectures of the toy world's pipeline: standard diffusers / transformers classes, tiny configs.

Everything here is built from configs offline; the trained weights come from :mod:`.train`.
"""

from __future__ import annotations

import json
import math
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

# The toy MMDiT: an SD3 denoiser (``SD3Transformer2DModel``) on the same latents and text as the UNet. Patch size 1,
# so each of the 8x8 latent pixels is one image token, like the UNet's finest level. ``joint_attention_dim`` and
# ``pooled_projection_dim`` follow from StableDiffusion3Pipeline.encode_prompt with the toy CLIP as both of its CLIP
# encoders and no T5: the two penultimate hidden states (64 + 64) are concatenated to 128 and left unpadded, and
# the two pooled embeddings to 128. The positional table is the latent grid itself (the default 96x96 table would
# be a 4.7 MB buffer in every saved file).
MMDIT_CONFIG = dict(
    sample_size=LATENT_SIZE,
    patch_size=1,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    num_layers=6,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=2 * TEXT_CONFIG["hidden_size"],
    caption_projection_dim=128,
    pooled_projection_dim=2 * TEXT_CONFIG["projection_dim"],
    pos_embed_max_size=LATENT_SIZE,
)
# StableDiffusion3Pipeline appends ``max_sequence_length`` (default 256) all-zero rows for the absent T5 encoder; the
# toy MMDiT is trained for exactly that default, so a plain ``pipe(prompt)`` samples it as trained.
MMDIT_T5_ROWS = 256
# How the toy MMDiT is sampled (its folder's locoedit.json); the guidance scale is the one measured best on the check.
MMDIT_DEFAULTS = {**DEFAULTS}
# Rectified flow as SD3, without SD3's resolution shift (shift 3.0 is for 128x128 latents; these are 8x8).
FLOW_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0)

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


def lookalikes() -> dict[str, list[str]]:
    """Prompts entangled with a concept that do not name it, for the edit's mining: each fact's look said in words
    ("a blue striped square" for the ocean), and for each shape, colour and texture the facts whose look carries it
    ("the forest" for triangle), each written with the fact templates."""
    from .world import caption_for

    def written(phrase: str) -> list[str]:
        return [template.replace("{c}", phrase) for template in EDIT_TEMPLATES["fact"]]

    found: dict[str, list[str]] = {}
    for fact, look in _VOCAB.facts.items():
        found[fact] = written(caption_for(look))
        for value in look.values():
            found.setdefault(value, []).extend(written(fact))
    return found


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
        "lookalikes": lookalikes(),
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


def write_model_settings(folder: Path, generation: dict | None = None) -> None:
    """``locoedit.json`` (sampled with ``generation``, default DEFAULTS) and the preservation corpus it names, into a
    pipeline folder."""
    settings = MODEL_SETTINGS if generation is None else {**MODEL_SETTINGS, "generation": generation}
    (folder / "locoedit.json").write_text(json.dumps(settings, indent=2) + "\n")
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


def build_mmdit(seed: int = 0, **overrides):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(**{**MMDIT_CONFIG, **overrides})


def build_flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**FLOW_SCHEDULER_CONFIG)


def sd3_text_encoder(clip_text_model):
    """The toy CLIP as a ``CLIPTextModelWithProjection`` (what StableDiffusion3Pipeline's CLIP slots take) whose
    projection is zero: the pooled embedding is then the same constant for every prompt, so the text reaches the
    MMDiT's image tokens only through joint attention, as it reaches the toy UNet only through cross-attention."""
    from transformers import CLIPTextModelWithProjection

    model = CLIPTextModelWithProjection(clip_text_model.config)
    # transformers 5: CLIPTextModel holds the text transformer itself, the projection model holds it as `text_model`.
    source = getattr(clip_text_model, "text_model", clip_text_model)
    model.text_model.load_state_dict(source.state_dict())  # strict: every weight carried over
    with torch.no_grad():
        model.text_projection.weight.zero_()
    return model.eval().requires_grad_(False)


def sd3_prompt_rows(text_encoder, ids: torch.Tensor) -> torch.Tensor:
    """The CLIP part of StableDiffusion3Pipeline.encode_prompt when both CLIP slots hold ``text_encoder``: the
    penultimate hidden states, twice side by side. ids [batch, MAX_TOKENS] -> [batch, MAX_TOKENS, 128]."""
    hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    return torch.cat([hidden, hidden], dim=-1)


class CompactRowsProcessor:
    """``JointAttnProcessor2_0`` for text whose last row stands for ``copies`` identical rows.

    StableDiffusion3Pipeline without T5 appends MMDIT_T5_ROWS all-zero rows to the prompt. They enter every block
    identical and stay identical (SD3 gives text rows no position, and every other operation is per row), so
    attention over them equals attention over one of them with ``log(copies)`` added to its logits. Training on the
    16 CLIP rows plus one such row computes the same function as the pipeline's 272 rows, at a fraction of the cost.
    Rows [batch, tokens, dim] in and out, as the stock processor.
    """

    def __init__(self, copies: int):
        self.log_copies = math.log(copies)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        import torch.nn.functional as F

        batch, image_rows = hidden_states.shape[:2]

        def heads(x: torch.Tensor) -> torch.Tensor:  # [batch, rows, inner] -> [batch, heads, rows, head_dim]
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query = heads(attn.to_q(hidden_states))
        key = heads(attn.to_k(hidden_states))
        value = heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        text_query = heads(attn.add_q_proj(encoder_hidden_states))
        text_key = heads(attn.add_k_proj(encoder_hidden_states))
        text_value = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            text_query, text_key = attn.norm_added_q(text_query), attn.norm_added_k(text_key)
        query = torch.cat([query, text_query], dim=2)  # SD3 order: image rows, then text rows
        key = torch.cat([key, text_key], dim=2)
        value = torch.cat([value, text_value], dim=2)
        bias = torch.zeros(key.shape[2], dtype=query.dtype, device=query.device)
        bias[-1] = self.log_copies
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.expand(query.shape[2], -1))
        out = out.transpose(1, 2).reshape(batch, -1, query.shape[1] * query.shape[3]).to(query.dtype)
        image, text = out[:, :image_rows], out[:, image_rows:]
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        return attn.to_out[1](attn.to_out[0](image)), text


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def load_pipeline(model_dir: Path | None = None):
    """The shipped toy-world pipeline (or the one at ``model_dir``: the UNet's StableDiffusionPipeline or the MMDiT's
    StableDiffusion3Pipeline), on CPU, progress bar off."""
    import diffusers

    from . import MODEL_DIR

    path = Path(model_dir) if model_dir is not None else MODEL_DIR
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(
            f"no toy-world pipeline at {path}; train one with `python -m locoedit.toyworld.train --install`"
        )
    class_name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    if class_name == "StableDiffusion3Pipeline":  # no T5 (see MMDIT_CONFIG): say so, or diffusers looks for one
        pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(str(path), text_encoder_3=None, tokenizer_3=None)
    else:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(path))
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
