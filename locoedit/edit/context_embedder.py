"""UCE's shortcut on SD3/FLUX, a stated baseline: the closed form on ``context_embedder`` alone.

SD3 and FLUX project the text encoders' states into the text stream with one matrix, ``context_embedder``, before
the first joint block. Unified Concept Editing's recipe, carried over to these models, edits only that matrix: the
concept's encoder rows should project to what the target's rows project to today, with the same preservation as
LocoEdit (neighbours, general corpus, ``--preserve`` prompts), all read as the encoder leaves them. No localization:
every block reads the edited stream. LocoEdit edits the blocks LocoGen chose instead
(:mod:`locoedit.edit.key_value`); ``bench/plain_edit_unseen.py --methods locoedit,uce-context`` measures the
two side by side.
"""

from __future__ import annotations

import torch

from locoedit.core.errors import LocoeditError
from locoedit.core.lowrank import LowRank
from locoedit.delta.file import EditDelta, describe_original
from locoedit.edit.closed_form import Regulariser
from locoedit.edit.key_value import solve_into
from locoedit.edit.preservation import general_corpus, preserved_neighbour_prompts
from locoedit.edit.request import ContextEmbedderRequest
from locoedit.edit.rows import aligned_positions, all_real_positions
from locoedit.interventions.capture import row_index
from locoedit.models import Adapter
from locoedit.models.layers import CrossAttentionLayer

PARAMETER = "context_embedder.weight"
_BATCH = 64  # prompts encoded at once


def encoder_rows(adapter: Adapter, prompts: list[str], positions: list[list[int]]) -> torch.Tensor:
    """``positions[i]`` of prompt ``i``'s encoder states, as ``context_embedder`` reads them: [rows, in] float64."""
    prompt_index, position_index = row_index(positions)
    with torch.no_grad():
        states = adapter.encode(prompts).conditional.embeds  # [prompts, tokens, in]
    return states[prompt_index.to(states.device), position_index.to(states.device)].to(torch.float64)


def encoder_moment(adapter: Adapter, prompts: list[str]) -> tuple[torch.Tensor, int]:
    """``sum x x^T`` [in, in] float64 over every row ``context_embedder`` reads of ``prompts`` (padding included),
    and the row count."""
    total, count = None, 0
    for start in range(0, len(prompts), _BATCH):
        with torch.no_grad():
            states = adapter.encode(prompts[start : start + _BATCH]).conditional.embeds
        rows = states.reshape(-1, states.shape[-1]).to(torch.float64)
        total = rows.T @ rows if total is None else total + rows.T @ rows
        count += len(rows)
    assert total is not None  # callers pass at least one prompt
    return total, count


def preservation_moment(
    adapter: Adapter, request: ContextEmbedderRequest, dim: int
) -> tuple[torch.Tensor, dict[str, int]]:
    """``C`` as LocoEdit builds it (:func:`~locoedit.edit.key_value.build_preservation`), on the encoder rows:
    preserve_neighbours x the neighbours' mean ``x x^T`` + preserve_general x the corpus's (prompts naming a concept
    left out) + preserve_scale x the explicit prompts' sum ([dim, dim] float64); and how many prompts each source
    gave."""
    moment = torch.zeros(dim, dim, dtype=torch.float64, device=adapter.device)
    counts = {"neighbours": 0, "general": 0, "explicit": len(request.preserve)}
    if request.preserve_neighbours > 0 and (prompts := preserved_neighbour_prompts(adapter, request)):
        sums, count = encoder_moment(adapter, prompts)
        moment += request.preserve_neighbours * sums / count
        counts["neighbours"] = len(prompts)
    if request.preserve_general > 0:
        _, corpus, naming = general_corpus(adapter, request)
        left_out = set(naming)
        kept = [p for p in corpus if p not in left_out]
        sums, count = encoder_moment(adapter, kept)
        moment += request.preserve_general * sums / count
        counts["general"] = len(kept)
    if request.preserve:
        prompts = list(request.preserve)
        explicit = encoder_rows(adapter, prompts, all_real_positions(adapter, prompts))
        moment += request.preserve_scale * explicit.T @ explicit
    return moment, counts


def context_embedder_edit(
    adapter: Adapter, request: ContextEmbedderRequest, layers: list[CrossAttentionLayer]
) -> EditDelta:
    """The edit of ``context_embedder.weight`` alone, as a delta (``layers`` is empty: this method has none). The
    model is not modified."""
    embedder = getattr(adapter.denoiser, "context_embedder", None)
    if not adapter.joint_attention or not isinstance(embedder, torch.nn.Linear):
        raise LocoeditError(
            f"{type(adapter.denoiser).__name__} has no context_embedder projecting the text into a joint-attention "
            "stream; this baseline is for SD3/FLUX. On cross-attention models UCE's edit is LocoEdit's closed form "
            "on every layer: `locoedit edit MODEL --layers` with all indices"
        )
    pairs = request.pairs()
    aligned = [aligned_positions(adapter, pair, request.token) for pair in pairs]
    sources = encoder_rows(adapter, [p.prompt for p in pairs], [a for a, _ in aligned])
    targets = encoder_rows(adapter, [p.target_prompt for p in pairs], [b for _, b in aligned])
    weight = embedder.weight
    moment, counts = preservation_moment(adapter, request, weight.shape[1])
    regulariser = Regulariser(request.lambda_key, moment)
    tensors: dict[str, torch.Tensor] = {}
    factors: dict[str, LowRank] = {}
    objective = solve_into(weight, sources, targets, regulariser, PARAMETER, tensors, factors)
    settings = request.to_json()
    settings.update(
        {
            "prompt_pairs": [[p.prompt, p.target_prompt] for p in pairs],
            "concept_rows": len(sources),
            "concept_positions": [a for a, _ in aligned],
            "preserve_prompts": counts,
            "objectives": [{"parameter": PARAMETER, "objective": objective}],
        }
    )
    originals = {PARAMETER: describe_original(weight)}
    return EditDelta.computed_on(adapter, request.model, "uce-context", [], tensors, originals, settings, factors)
