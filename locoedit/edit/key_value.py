"""LocoEdit: rewrite the key and value projections of the localized cross-attention layers in closed form.

For each edited projection ``W`` the concept's text rows should produce what the target's rows produce today, while
the outputs of the rows to preserve, and ``W`` itself, move as little as possible (:mod:`locoedit.edit.closed_form`).
Which rows: :mod:`locoedit.edit.rows`; what is preserved: :mod:`locoedit.edit.preservation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from locoedit.core.lowrank import LowRank, Workspace, check_low_rank_fits
from locoedit.delta.file import EditDelta, describe_original
from locoedit.edit.closed_form import Regulariser, compress_rows, edit_factors, edit_matrix
from locoedit.edit.common import uses_model_templates, with_model_defaults
from locoedit.edit.entangled import CachedSummaries, EntangledPrompt, candidates, contrast_pairs, mine_entangled
from locoedit.edit.preservation import (
    corpus_stats,
    general_corpus,
    input_space,
    moment_sums,
    preserved_neighbour_prompts,
    spaces_of,
)
from locoedit.edit.request import EditRequest
from locoedit.edit.rows import (
    PromptPair,
    TextRows,
    aligned_positions,
    all_real_positions,
    encode_rows,
)
from locoedit.models import Adapter
from locoedit.models.layers import CrossAttentionLayer

# Joint attention: the share of the concept rows' energy the solve keeps (:func:`compress_rows`). On the toy MMDiT
# 99.99% of it lies in 74-95 of a block's 128 directions, so the update stays a LoRA of that rank.
JOINT_ROW_ENERGY = 0.9999
# The weight of a look-alike contrast pair's rows against a template pair's (:func:`build_rows`). On the toy world
# (12 fresh captions x 4 seeds; efficacy / look-alikes kept) blue -> yellow: 1.0 98 / 60, 0.3 98 / 77, 0.1 100 / 85,
# without the pairs 98 / 94; the demo's circle -> square stays at 100 / 100 down to 0.1 (75 / 100 without them).
CONTRAST_WEIGHT = 0.1


@dataclass
class EditRows:
    concept: TextRows  # X_o
    target: TextRows  # X_t, aligned row by row with ``concept``
    pairs: list[PromptPair]
    contrast: int = 0  # the last ``contrast`` pairs are look-alike contrast pairs, weighted CONTRAST_WEIGHT

    def matrices(self, layer: CrossAttentionLayer) -> tuple[torch.Tensor, torch.Tensor]:  # [rows, in] float64 x2
        sources, targets = self.concept.at(layer), self.target.at(layer)
        if not self.contrast:
            return sources, targets
        own = len(self.pairs) - self.contrast
        weight = torch.where(self.concept.prompt_index >= own, CONTRAST_WEIGHT**0.5, 1.0).to(torch.float64)
        scale = weight.repeat_interleave(self.concept.samples).to(sources.device)[:, None]
        return sources * scale, targets * scale


def build_rows(adapter: Adapter, request: EditRequest) -> EditRows:
    """The concept and target rows of the request's prompt pairs and, when look-alikes are mined and preserved, the
    prompts are the model's templates and the denoiser has cross-attention, of the listed look-alikes that name the
    concept (:func:`~locoedit.edit.entangled.contrast_pairs`)."""
    request = with_model_defaults(request, adapter)  # what the request leaves open (token, templates)
    pairs = request.pairs()
    contrast = []
    # Not on joint attention: on the toy MMDiT's demo object (blocks 0-1, 4 seeds) they cost specificity, 97% -> 90%,
    # and the look-alikes were kept without them (100%).
    if request.preserve_nearest > 0 and not adapter.joint_attention and uses_model_templates(request, adapter):
        contrast = contrast_pairs(adapter, request, pairs)
    pairs = pairs + contrast
    aligned = [aligned_positions(adapter, pair, request.token) for pair in pairs]
    concept = encode_rows(adapter, [p.prompt for p in pairs], [a for a, _ in aligned])
    target = encode_rows(adapter, [p.target_prompt for p in pairs], [b for _, b in aligned])
    return EditRows(concept, target, pairs, len(contrast))


@dataclass
class Preservation:
    """The preservation second moment ``C`` per input space, how many prompts of each source went into it, and the
    prompts entanglement mining may choose from (:mod:`locoedit.edit.entangled`)."""

    moments: dict[str, torch.Tensor]  # input space -> [in, in] float64
    counts: dict[str, int]  # source -> prompts
    corpus: list[str] = field(default_factory=list)  # the general corpus's prompts that name no edited concept
    neighbour_prompts: list[str] = field(default_factory=list)
    cached: CachedSummaries | None = None  # the general corpus's summary rows, from its statistics
    # How many times each concept row was captured (joint attention: every step of every capture seed), each
    # time one row of X_o: C and lambda are scaled by it, so that a concept row weighs against them as much as a
    # cross-attention row does.
    samples: int = 1
    # one factorisation per input space and lambda, shared by the mining and the edit until ``add`` changes C
    _regularisers: dict[tuple[str, float], Regulariser] = field(default_factory=dict, repr=False)

    def regulariser(self, layer: CrossAttentionLayer, lam: float) -> Regulariser:
        key = (input_space(layer), lam)
        if key not in self._regularisers:
            moment = self.moments.get(key[0])
            self._regularisers[key] = Regulariser(lam * self.samples, None if moment is None else moment * self.samples)
        return self._regularisers[key]

    def add(self, sums: dict[str, torch.Tensor], weight: float) -> None:
        for space, moment in sums.items():
            self.moments[space] = weight * moment + self.moments.get(space, 0)
        self._regularisers.clear()


def build_preservation(
    adapter: Adapter, request: EditRequest, layers: list[CrossAttentionLayer], samples: int = 1
) -> Preservation:
    """``C`` = preserve_neighbours x mean over the neighbours' rows + preserve_general x mean over the general
    corpus's rows + preserve_scale x the sum over the explicit ``preserve`` prompts' rows; ``samples``: how many
    times each concept row was captured (:attr:`~locoedit.edit.rows.TextRows.samples`)."""
    request = with_model_defaults(request, adapter)
    spaces = spaces_of(layers)
    kept = Preservation({}, {"neighbours": 0, "general": 0, "explicit": len(request.preserve)}, samples=samples)
    if request.preserve_neighbours > 0 or request.preserve_nearest > 0:
        kept.neighbour_prompts = preserved_neighbour_prompts(adapter, request)
    if request.preserve_neighbours > 0 and kept.neighbour_prompts:
        sums, rows = moment_sums(adapter, kept.neighbour_prompts, spaces)
        kept.add(sums, request.preserve_neighbours / rows)
        kept.counts["neighbours"] = len(kept.neighbour_prompts)
    if request.preserve_general > 0:
        _, corpus, naming = general_corpus(adapter, request)
        stats = corpus_stats(adapter, corpus, request.preserve_stats)
        sums, rows = {space: stats.sums[space] for space in spaces}, stats.rows
        if naming:  # left out: the edit is meant to change them
            left_out, left_out_rows = moment_sums(adapter, naming, spaces)
            sums = {space: sums[space] - left_out[space] for space in sums}
            rows -= left_out_rows
        kept.add(sums, request.preserve_general / rows)
        kept.counts["general"] = len(corpus) - len(naming)
        left_out_prompts = set(naming)
        kept.corpus = [p for p in corpus if p not in left_out_prompts]
        kept.cached = None if stats.summaries is None else CachedSummaries(corpus, stats.summaries)
    if request.preserve:
        explicit = encode_rows(adapter, list(request.preserve), all_real_positions(adapter, request.preserve))
        kept.add({space: explicit.second_moment(layer) for space, layer in spaces.items()}, request.preserve_scale)
    return kept


def preserve_entangled(
    adapter: Adapter,
    request: EditRequest,
    layers: list[CrossAttentionLayer],
    rows: EditRows,
    preservation: Preservation,
) -> list[EntangledPrompt]:
    """Mine the ``preserve_nearest`` prompts the edit would move most (:mod:`locoedit.edit.entangled`) with the
    preservation built so far, and add them to it (``preserve_nearest_weight`` times their rows' mean ``x x^T``)."""
    if request.preserve_nearest == 0:
        return []
    lambdas = (request.lambda_key, request.lambda_value)
    pool = candidates(adapter, request.concepts, preservation.corpus, preservation.neighbour_prompts)
    mined = mine_entangled(
        adapter,
        layers,
        rows.matrices,
        preservation.regulariser,
        lambdas,
        pool,
        request.preserve_nearest,
        preservation.cached,
    )
    if mined and request.preserve_nearest_weight > 0:
        sums, count = moment_sums(adapter, [m.prompt for m in mined], spaces_of(layers))
        preservation.add(sums, request.preserve_nearest_weight / count)
        preservation.counts["nearest"] = len(mined)
    return mined


def solve_into(
    weight: torch.Tensor,
    sources: torch.Tensor,
    targets: torch.Tensor,
    regulariser: Regulariser,
    name: str,
    tensors: dict[str, torch.Tensor],
    factors: dict[str, LowRank],
    workspace: Workspace | None = None,
) -> float:
    """The closed form of one matrix ``name`` into ``factors`` (fewer rows than its rank: the update S^T V has
    rank <= rows, so keep its factors) or ``tensors`` (the dense new matrix); returns the objective."""
    if len(sources) < min(weight.shape):
        update, objective = edit_factors(weight, sources, targets, regulariser, workspace)
        check_low_rank_fits(weight, update, name)
        factors[name] = LowRank(update.up.cpu(), update.down.cpu())
    else:
        new, objective = edit_matrix(weight, sources, targets, regulariser, name, workspace)
        tensors[name] = new.cpu()
    return objective


def key_value_edit(adapter: Adapter, request: EditRequest, layers: list[CrossAttentionLayer]) -> EditDelta:
    """The LocoEdit of ``request`` (its open settings already taken from the model, see
    :meth:`~locoedit.edit.methods.EditMethod.compute`) on ``layers`` of ``adapter``'s model, as a delta. The model
    is not modified."""
    rows = build_rows(adapter, request)
    preservation = build_preservation(adapter, request, layers, rows.concept.samples)
    entangled = preserve_entangled(adapter, request, layers, rows, preservation)
    tensors: dict[str, torch.Tensor] = {}
    factors: dict[str, LowRank] = {}
    originals: dict[str, dict] = {}
    report = []
    workspace = Workspace()
    for position, layer in enumerate(layers):
        if layer.stream == "dual" and position > 0:  # the text stream it reads, as the blocks edited so far leave it
            edited_so_far = EditDelta.computed_on(
                adapter, "", "locoedit", layers[:position], tensors, originals, {}, factors
            )
            with edited_so_far.installed(adapter):
                rows.concept = encode_rows(adapter, [p.prompt for p in rows.pairs], rows.concept.positions())
        sources, targets = rows.matrices(layer)  # [rows, in] float64
        if rows.concept.samples > 1:  # every row at every step and seed: thousands of rows, a few dozen directions
            sources, targets = compress_rows(sources, targets, JOINT_ROW_ENERGY)
        for projection, lam in zip(layer.edit_projections, (request.lambda_key, request.lambda_value)):
            name = f"{layer.name}.{projection}.weight"
            weight = getattr(layer.module, projection).weight  # [out, in]
            regulariser = preservation.regulariser(layer, lam)
            objective = solve_into(weight, sources, targets, regulariser, name, tensors, factors, workspace)
            originals[name] = describe_original(weight)
            report.append({"parameter": name, "objective": objective})
    settings = request.to_json()
    settings.update(
        {
            "prompt_pairs": [[p.prompt, p.target_prompt] for p in rows.pairs],
            "contrast_pairs": rows.contrast,
            "concept_rows": len(rows.concept),
            "concept_positions": rows.concept.positions(),
            "preserve_prompts": preservation.counts,
            "entangled": [prompt.to_json() for prompt in entangled],
            "objectives": report,
        }
    )
    return EditDelta.computed_on(adapter, request.model, "locoedit", layers, tensors, originals, settings, factors)
