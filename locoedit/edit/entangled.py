"""Prompts entangled with an edited concept: found in the model's own key/value space, then preserved.

An edit of "the ocean" also moved "a blue striped square" (the ocean's look, said in words), and an edit of
"triangle" moved "the forest" (a green dotted triangle): prompts that never name the concept but whose text rows
lie where the concept's do. The neighbours and the general corpus do not hold them, or hold them among hundreds
of others with a weight too small to matter.

Mining asks the edit itself which prompts it would move. The edit is first solved with the other preservation
sources; for every candidate prompt its *summary row* (the row at its end token: a causal text encoder has read the
whole prompt there, and a bidirectional one has at every row) goes through the provisional update ``D = U V`` of
each edited projection. A candidate's entanglement is ``||D x||`` relative to the mean ``||D x_c||`` over the
concept's own rows, averaged over the projections of up to :data:`MINED_LAYERS` edited layers (evenly spread: the
cost stays flat however many layers an edit changes). 1 means "moved as much as the concept"; prompts with unrelated
text score near 0. The ``preserve_nearest`` most entangled candidates are preserved, every padded row of each, with
weight ``preserve_nearest_weight`` times their mean ``x x^T`` (the same form as the neighbours), and the edit is
solved again.

Candidates: the general corpus (its summary rows are cached with its statistics), the neighbours' prompts, and the
model folder's known look-alikes (``locoedit.json`` ``edit.lookalikes``: concept -> prompts; the toy world lists
each fact's look said in words and, for each shape, colour and texture, the facts that carry it). Prompts that
name an edited concept are never candidates: the edit is meant to change them.

Preserving a look-alike also holds still the concept's prompts that look like it: with "the sun" (a yellow plain
circle) preserved, a circle -> square edit left "a yellow dotted circle on black" a circle in 6 of 8 seeds. So the
listed look-alikes that *name* an edited concept ("a yellow plain circle", the sun's look) become more prompt pairs
of an edit on the model's templates (:func:`contrast_pairs`; prompts a user writes are the whole prompt set): the
closed form then sees both sides and keeps only what tells the sun from a yellow circle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from locoedit.core.lowrank import Workspace
from locoedit.edit.closed_form import Regulariser, closed_form_edit, edit_factors
from locoedit.edit.preservation import encode_summaries, input_space, names_concept, usable
from locoedit.edit.rows import PromptPair, prompt_pairs
from locoedit.models import Adapter
from locoedit.models.base import find_phrase
from locoedit.models.layers import CrossAttentionLayer

MINED_LAYERS = 4  # edited layers whose projections score the candidates


@dataclass(frozen=True)
class EntangledPrompt:
    prompt: str
    source: str  # "look-alike" (the model folder's list), "neighbours" or "corpus"
    entanglement: float  # how far the provisional edit moves its summary row, relative to the concept's rows

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "source": self.source, "entanglement": round(self.entanglement, 4)}


def known_lookalikes(adapter: Adapter, concepts) -> list[str]:
    """The model folder's look-alikes of each concept (``edit.lookalikes``), matched case-insensitively."""
    recommended = adapter.recommended.edit
    listed = {c.strip().lower(): prompts for c, prompts in (recommended.lookalikes if recommended else {}).items()}
    return [prompt for concept in concepts for prompt in listed.get(concept.strip().lower(), [])]


def contrast_pairs(adapter: Adapter, request, pairs: list[PromptPair]) -> list[PromptPair]:
    """Pairs of the model folder's listed look-alike prompts that name an edited concept (any concept's list: "a
    yellow plain circle", the sun's look, for circle), each with the concept's target in its place; those the edit's
    ``pairs`` already hold, or the text encoder cannot take whole, left out."""
    recommended = adapter.recommended.edit
    listed = [prompt for prompts in (recommended.lookalikes if recommended else {}).values() for prompt in prompts]
    have = {pair.prompt for pair in pairs}
    found: list[PromptPair] = []
    for concept, target in zip(request.concepts, request.all_targets):
        naming = [p for p in dict.fromkeys(listed) if p not in have and find_phrase(p, concept) is not None]
        if naming:
            found += prompt_pairs((concept,), (target,), usable(adapter, naming, "the model folder's look-alikes"))
    return found


def candidates(
    adapter: Adapter, concepts, corpus: list[str], neighbours: list[str]
) -> tuple[list[str], list[str]]:  # prompts, and each one's source
    """Every distinct candidate that names no edited concept: look-alikes first, then neighbours, then corpus."""
    found: dict[str, str] = {}
    lookalikes = known_lookalikes(adapter, concepts)
    if lookalikes:
        lookalikes = usable(adapter, lookalikes, "the model folder's look-alikes")
    for source, prompts in (("look-alike", lookalikes), ("neighbours", neighbours), ("corpus", corpus)):
        for prompt in prompts:
            if prompt not in found and not any(names_concept(prompt, c) for c in concepts):
                found[prompt] = source
    return list(found), list(found.values())


def scoring_layers(layers: list[CrossAttentionLayer]) -> list[CrossAttentionLayer]:
    """Up to :data:`MINED_LAYERS` of ``layers``, first and last included, evenly spread."""
    if len(layers) <= MINED_LAYERS:
        return list(layers)
    step = (len(layers) - 1) / (MINED_LAYERS - 1)
    return [layers[round(i * step)] for i in range(MINED_LAYERS)]


def entanglement(
    layers: list[CrossAttentionLayer],
    concept_rows,  # layer -> (X_o, X_t) [n, in] float64
    regularisers,  # (layer, lam) -> Regulariser: the provisional edit's
    lambdas: tuple[float, float],
    summaries: dict[str, torch.Tensor],  # input space -> [candidates, in] float64
) -> torch.Tensor:  # [candidates]
    """Each candidate's mean ``||D x|| / mean_c ||D x_c||`` over the projections of :func:`scoring_layers`."""
    workspace = Workspace()
    total, count = None, 0
    for layer in scoring_layers(layers):
        sources, targets = concept_rows(layer)
        x = summaries[input_space(layer)].to(sources.device)  # cached rows live on the CPU
        for projection, lam in zip(layer.edit_projections, lambdas):
            weight = getattr(layer.module, projection).weight
            regulariser: Regulariser = regularisers(layer, lam)
            if len(sources) >= min(weight.shape):  # a full-rank update: D as a dense difference
                update = _dense_update(weight, sources, targets, regulariser)
                moved, own = (x @ update.T).norm(dim=1), (sources @ update.T).norm(dim=1)
            else:
                factors, _ = edit_factors(weight, sources, targets, regulariser, workspace)
                moved = ((x @ factors.down.T) @ factors.up.T).norm(dim=1)
                own = ((sources @ factors.down.T) @ factors.up.T).norm(dim=1)
            ratio = moved / own.mean().clamp_min(1e-12)
            total = ratio if total is None else total + ratio
            count += 1
    assert total is not None
    return total / count


def _dense_update(weight, sources, targets, regulariser: Regulariser) -> torch.Tensor:  # [out, in] float64
    return closed_form_edit(weight, sources, targets, regulariser) - weight.detach().to(torch.float64)


def mine_entangled(
    adapter: Adapter,
    layers: list[CrossAttentionLayer],
    concept_rows,
    regularisers,
    lambdas: tuple[float, float],
    pool: tuple[list[str], list[str]],  # candidates and their sources (:func:`candidates`)
    count: int,
    cached: CachedSummaries | None = None,
) -> list[EntangledPrompt]:
    """The ``count`` candidates the provisional edit moves most, most entangled first."""
    prompts, sources = pool
    if count == 0 or not prompts:
        return []
    spaces = {input_space(layer): layer for layer in scoring_layers(layers)}
    summaries = _summaries(adapter, prompts, spaces, cached)
    scores = entanglement(layers, concept_rows, regularisers, lambdas, summaries)
    order = scores.argsort(descending=True)[:count].tolist()
    return [EntangledPrompt(prompts[i], sources[i], float(scores[i])) for i in order]


@dataclass(frozen=True)
class CachedSummaries:
    """Summary rows already computed (the general corpus's, with its statistics): ``rows[space][i]`` is prompt i's."""

    prompts: list[str]
    rows: dict[str, torch.Tensor]  # input space -> [prompts, in]


def _summaries(adapter, prompts, spaces, cached: CachedSummaries | None) -> dict[str, torch.Tensor]:
    """Summary rows of ``prompts`` per input space ([prompts, in] float64, in their order): cached where ``cached``
    holds them, encoded otherwise."""
    known: dict[str, torch.Tensor] = {}
    index: dict[str, int] = {}
    if cached is not None and all(space in cached.rows for space in spaces):
        known, index = cached.rows, {prompt: i for i, prompt in enumerate(cached.prompts)}
    misses = [prompt for prompt in prompts if prompt not in index]
    encoded = encode_summaries(adapter, misses, spaces) if misses else {}
    encoded_at = {prompt: i for i, prompt in enumerate(misses)}
    return {
        space: torch.stack(
            [encoded[space][encoded_at[p]].cpu() if p in encoded_at else known[space][index[p]] for p in prompts]
        ).to(torch.float64)
        for space in spaces
    }
