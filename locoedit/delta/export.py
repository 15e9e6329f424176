"""A delta as a LoRA file that diffusers, A1111 and ComfyUI load (``locoedit export``); no model is needed.

A factored edit ``W' = W + U V`` is exactly a LoRA of rank r: ``lora_up``/``lora_B`` [out, r] times
``lora_down``/``lora_A`` [r, in], at scale 1 (alpha = r). The factors are first brought to the balanced SVD form
``(P sqrt(S)) (sqrt(S) Q^T)`` through two thin QR factorisations and an r x r SVD (never an [out, in] matrix), so
that both halves have the same scale and ``rank=R`` keeps the R largest singular values, the best rank-R
approximation (Eckart-Young), with its relative error reported.

Key layouts, as diffusers 0.42.1 reads them (``loaders/lora_pipeline.py``, ``loaders/lora_conversion_utils.py``):

- ``kohya`` (A1111, ComfyUI; diffusers converts it): ``lora_unet_<module path, dots as underscores>.lora_down.weight``
  [r, in], ``.lora_up.weight`` [out, r], ``.alpha`` = r. diffusers' converter turns the underscores back into
  dots and restores the names it knows (``to_k``, ``transformer_blocks``, ...), so the diffusers module path works
  for SD-1/2 and SD-XL alike; DeepFloyd IF's ``add_k_proj``/``add_v_proj`` are not among them (refused).
- ``peft`` (diffusers' own): ``unet.<module path>.lora_A.weight`` / ``.lora_B.weight`` and the ``LoraConfig``
  arguments (``r``, ``lora_alpha``, ``target_modules``) in the header's ``lora_adapter_metadata``.

SD3 and FLUX (joint attention): ``peft`` only, ``transformer.<module path>...``, loaded by their pipelines'
``load_lora_weights``; their kohya files name the original checkpoint's fused matrices (refused).

Refused, with the reason: parameters stored dense (biases, full-rank updates, version-1 deltas: a LoRA needs the
update, not new values), and PixArt-alpha, for which diffusers 0.42.1 has no LoRA loader.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from locoedit.core.errors import LocoeditError
from locoedit.core.io import write_safetensors
from locoedit.core.lowrank import LowRank
from locoedit.delta.file import EditDelta, check_strength

FORMATS = ("kohya", "peft")
UNET = "UNet2DConditionModel"  # SD-1/2, SD-XL, DeepFloyd IF: their pipelines load LoRAs into ``unet``
# Joint-attention denoisers: SD3's and FLUX's pipelines load peft LoRAs into ``transformer``. Their kohya files are
# read in Black Forest Labs' own names (FLUX's text keys and values fused in ``txt_attn.qkv``), not diffusers'.
JOINT = ("SD3Transformer2DModel", "FluxTransformer2DModel")
_KOHYA_UNKNOWN = ("add_k_proj", "add_v_proj")  # names diffusers' kohya converter does not restore


@dataclass(frozen=True)
class LoraFactors:
    """One matrix's LoRA: ``up`` [out, R] and ``down`` [R, in], float64, and what truncating to R lost."""

    up: torch.Tensor  # [out, R]
    down: torch.Tensor  # [R, in]
    relative_error: float  # ||U V - up down||_F / ||U V||_F; 0 when nothing was dropped


@dataclass(frozen=True)
class LoraExport:
    """What :func:`export_lora` wrote."""

    path: Path
    format: str
    rank: int  # of every matrix in the file
    stored_rank: int  # of the delta's factors
    errors: dict[str, float]  # parameter path -> relative error of the truncation (Frobenius)

    @property
    def max_error(self) -> float:
        return max(self.errors.values())


def balanced_svd(update: LowRank, rank: int | None = None) -> LoraFactors:
    """``U V = (Qu Ru)(Qv Rv)^T = Qu (Ru Rv^T) Qv^T``; with ``Ru Rv^T = P S Q^T`` (r x r), ``U V = (Qu P) S (Qv Q)^T``,
    an exact thin SVD. Keeps the ``rank`` largest singular values (all when None), split as sqrt(S) on each side."""
    q_up, r_up = torch.linalg.qr(update.up)  # [out, r], [r, r]
    q_down, r_down = torch.linalg.qr(update.down.T)  # [in, r], [r, r]
    p, singular, q_t = torch.linalg.svd(r_up @ r_down.T)  # [r, r], [r], [r, r], descending
    kept = update.rank if rank is None else min(rank, update.rank)
    total = float(singular.square().sum())
    dropped = float(singular[kept:].square().sum())
    root = singular[:kept].sqrt()
    up = (q_up @ p[:, :kept]) * root  # [out, R]
    down = root[:, None] * (q_t[:kept] @ q_down.T)  # [R, in]
    return LoraFactors(up, down, math.sqrt(dropped / total) if total > 0 else 0.0)


def check_exportable(delta: EditDelta, format: str, rank: int | None = None) -> None:
    """Refuse, with the reason, a delta that cannot become a LoRA file diffusers loads in ``format``."""
    if format not in FORMATS:
        raise LocoeditError(f"unknown LoRA format {format!r}; use one of {', '.join(FORMATS)} (--format)")
    if rank is not None and rank < 1:
        raise LocoeditError(f"--rank {rank} must be at least 1")
    if delta.tensors:
        dense = sorted(delta.tensors)
        kind = "biases" if all(name.endswith(".bias") for name in dense) else "new values"
        raise LocoeditError(
            f"{len(dense)} parameter(s) of this delta ({dense[0]}, ...) are stored as {kind}, not as a low-rank "
            "update (a bias, an update of full rank, or a locoedit-delta/1 file), and a LoRA holds only W + B A; "
            "use `locoedit apply` to write the edited pipeline, or recompute the edit with fewer rows than the "
            "matrices' smaller side"
        )
    if delta.denoiser == "PixArtTransformer2DModel":
        raise LocoeditError(
            "diffusers 0.42.1 cannot load a LoRA into PixArt-alpha (PixArtAlphaPipeline has no load_lora_weights and "
            "PixArtTransformer2DModel no load_lora_adapter); use `locoedit apply` to write the edited pipeline"
        )
    if delta.denoiser in JOINT and format == "kohya":
        raise LocoeditError(
            f"diffusers reads kohya LoRAs of a {delta.denoiser} in the original checkpoint's names (text keys and "
            "values fused into one matrix), which a key/value edit cannot be written in; use --format peft"
        )
    if delta.denoiser != UNET and delta.denoiser not in JOINT:
        raise LocoeditError(
            f"no LoRA layout is known for a {delta.denoiser or 'version-1'} denoiser; use "
            "`locoedit apply` to write the edited pipeline"
        )
    unknown = [name for name in delta.factors if name.rsplit(".", 2)[-2] in _KOHYA_UNKNOWN]
    if format == "kohya" and unknown:
        raise LocoeditError(
            f"{unknown[0]}: diffusers' kohya converter turns add_k_proj/add_v_proj (DeepFloyd IF) into "
            "add.k.proj, which names no module, so diffusers could not load the file; use --format peft"
        )


def lora_tensors(
    delta: EditDelta,
    format: str,
    rank: int | None = None,
    dtype: torch.dtype | None = None,
    strength: float = 1.0,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The LoRA state dict of ``delta`` at ``strength`` in ``format`` (in ``dtype``, default the model's), and the
    relative error of the rank truncation per parameter."""
    check_exportable(delta, format, rank)
    check_strength(strength)
    dtype = dtype or delta.dtype
    tensors, errors = {}, {}
    loras = {
        name: balanced_svd(LowRank(update.up * strength, update.down), rank) for name, update in delta.factors.items()
    }
    common = max(lora.down.shape[0] for lora in loras.values())
    for name, lora in sorted(loras.items()):
        module = name.removesuffix(".weight")
        lora = _padded(lora, common)
        errors[name] = lora.relative_error
        if format == "kohya":
            key = "lora_unet_" + module.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = lora.down.to(dtype)
            tensors[f"{key}.lora_up.weight"] = lora.up.to(dtype)
            tensors[f"{key}.alpha"] = torch.tensor(float(lora.down.shape[0]), dtype=dtype)  # alpha = rank: scale 1
        else:
            tensors[f"{component(delta)}.{module}.lora_A.weight"] = lora.down.to(dtype)
            tensors[f"{component(delta)}.{module}.lora_B.weight"] = lora.up.to(dtype)
    return tensors, errors


def _padded(lora: LoraFactors, rank: int) -> LoraFactors:
    """The same update at ``rank``, zero columns and rows added: one file holds one rank (LoraConfig's ``r``, kohya's
    network dim), and the blocks of a joint-attention edit keep updates of different ranks."""
    missing = rank - lora.down.shape[0]
    if missing == 0:
        return lora
    up = torch.cat([lora.up, lora.up.new_zeros(lora.up.shape[0], missing)], dim=1)
    down = torch.cat([lora.down, lora.down.new_zeros(missing, lora.down.shape[1])])
    return LoraFactors(up, down, lora.relative_error)


def component(delta: EditDelta) -> str:
    """The pipeline component a peft LoRA of ``delta`` is loaded into: ``transformer`` for SD3 and FLUX, else
    ``unet``."""
    return "transformer" if delta.denoiser in JOINT else "unet"


def base_model_version(delta: EditDelta) -> str:
    """The base model as kohya's trainers name it (``ss_base_model_version``), which A1111 reads to list a LoRA with
    the checkpoints it fits: from the pipeline the delta was computed on, else (deltas of locoedit 0.1) from the
    text width its key/value projections read (SD-XL 2048, SD-2 1024, SD-1 768)."""
    width = next(iter(delta.factors.values())).down.shape[1]
    if delta.pipeline == "StableDiffusionXLPipeline" or (not delta.pipeline and width == 2048):
        return "sdxl_base_v1-0"
    return "sd_v2" if width == 1024 else "sd_v1"


def lora_metadata(delta: EditDelta, format: str, rank: int, strength: float = 1.0) -> dict[str, str]:
    """The file header: for kohya, the ``ss_*`` keys A1111 and ComfyUI read (base model version, network module,
    rank and alpha); for peft, the LoraConfig diffusers builds the adapter from (scale lora_alpha / r = 1); for
    both, where the LoRA came from."""
    source = {
        "base_model": delta.base_model,
        "method": delta.method,
        "layers": delta.layers,
        "fingerprint": delta.fingerprint,
        "locoedit_version": delta.version,
        "strength": strength,
    }
    metadata = {"format": "pt", "locoedit_source": json.dumps(source)}
    if format == "kohya":
        version = base_model_version(delta)
        metadata.update(
            {
                "ss_base_model_version": version,
                "ss_v2": str(version == "sd_v2"),
                "ss_network_module": "networks.lora",
                "ss_network_dim": str(rank),
                "ss_network_alpha": str(float(rank)),  # alpha = rank: scale 1
            }
        )
    else:
        config = {
            "r": rank,
            "lora_alpha": rank,
            "rank_pattern": {},
            "alpha_pattern": {},
            "target_modules": sorted(name.removesuffix(".weight") for name in delta.factors),
        }
        metadata["lora_adapter_metadata"] = json.dumps(
            {f"{component(delta)}.{k}": v for k, v in config.items()}, indent=2, sort_keys=True
        )
    return metadata


def export_lora(
    delta: EditDelta, format: str, out: str | Path, rank: int | None = None, strength: float = 1.0
) -> LoraExport:
    """Write ``delta`` at ``strength`` as a LoRA ``.safetensors`` file in ``format`` (atomically); the CLI's
    ``export``."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise LocoeditError(f"--out {out} must end in .safetensors (a LoRA file)")
    tensors, errors = lora_tensors(delta, format, rank, strength=strength)
    kept = next(t.shape[0] for key, t in tensors.items() if key.endswith(("lora_down.weight", "lora_A.weight")))
    write_safetensors(out, tensors, lora_metadata(delta, format, kept, strength))
    stored = next(iter(delta.factors.values())).rank
    return LoraExport(out, format, kept, stored, errors)
