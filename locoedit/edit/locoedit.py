"""LocoEdit: rewrite the key and value projections of the localized cross-attention layers in closed form.

For each edited projection ``W`` the concept's text rows should produce what the target's rows produce today, while
the outputs of the rows to preserve, and ``W`` itself, move as little as possible (:mod:`locoedit.edit.closed_form`).
Which rows: :mod:`locoedit.edit.rows`; what is preserved: :mod:`locoedit.edit.preservation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from locoedit.core.dtypes import dtype_named
from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord
from locoedit.core.lowrank import LowRank, Workspace, check_low_rank_fits
from locoedit.core.progress import ProgressCallback
from locoedit.edit.closed_form import Regulariser, edit_factors, edit_matrix
from locoedit.edit.common import (
    as_tuple,
    check_non_negative,
    check_positive,
    check_texts,
    normalise_common_fields,
    with_model_defaults,
)
from locoedit.edit.layers import auto_localization, resolve_layers
from locoedit.edit.preservation import (
    corpus_prompts,
    corpus_stats,
    input_space,
    moment_sums,
    names_concept,
    neighbour_concepts,
    neighbour_prompts,
    spaces_of,
    usable,
)
from locoedit.edit.rows import (
    PromptPair,
    TextRows,
    aligned_positions,
    all_real_positions,
    encode_rows,
    prompt_pairs,
)
from locoedit.edit.templates import prompt_templates
from locoedit.interventions.delta import EditDelta, check_delta_path, describe_original
from locoedit.models import Adapter, load_adapter
from locoedit.models.layers import CrossAttentionLayer


@dataclass(frozen=True)
class EditRequest(JsonRecord):
    """A LocoEdit of one or more concepts. Validates on construction; serialises to JSON."""

    FORMAT = "locoedit.edit-request/1"

    model: str
    concepts: tuple[str, ...]
    targets: tuple[str, ...]  # one per concept, or one for all
    kind: str = "object"  # which shipped templates to use when ``prompts`` is empty
    prompts: tuple[str, ...] = ()  # templates with "{c}", or prompts that contain a concept's text
    layers: tuple[int, ...] | str = "auto"  # indices, "auto" (run LocoGen first), or a LocoGen run folder
    preserve: tuple[str, ...] = ()  # prompts whose keys and values should stay
    preserve_scale: float = 1.0  # weight of each row of ``preserve`` relative to a concept row
    preserve_neighbours: float = 3.0  # weight of the neighbouring concepts' mean second moment
    preserve_general: float = 3.0  # weight of the general corpus's mean second moment
    neighbours: tuple[str, ...] = ()  # concepts to keep; empty = the concept's group in the model's (or shipped) lists
    preserve_corpus: str | None = None  # general corpus file, one prompt per line; None = the model's, else shipped
    preserve_stats: str | None = None  # the corpus's statistics from `locoedit stats --out`; None = cache
    lambda_key: float = 0.1
    lambda_value: float = 0.1
    token: str | None = None  # None = the model folder's recommendation, else last-subject
    dtype: str = "float32"
    device: str | None = None
    auto_window: int | str = "auto"  # LocoGen window size for layers="auto"; "auto": the smallest m that passes
    auto_threshold: float = 0.95  # ... this fraction of the effect of routing every layer
    auto_steps: int | None = None  # LocoGen denoising steps for layers="auto"; None = the family's default
    auto_seeds: tuple[int, ...] = (0, 1, 2, 3)
    auto_scorer: str | None = None  # LocoGen scorer for layers="auto"; None = the model's concept scorer

    def __post_init__(self):
        normalise_common_fields(self)
        for name in ("targets", "preserve", "neighbours"):
            object.__setattr__(self, name, as_tuple(getattr(self, name)))
        check_texts(
            self.prompts + self.preserve + self.neighbours,
            "a prompt, preservation prompt or neighbour is empty; every --prompt, --preserve and --neighbour "
            "needs text",
        )
        if not self.targets:
            raise LocoeditError(
                "give --target: what the concept should become (e.g. --target 'a painting'; --target '' removes it)"
            )
        if any(not isinstance(t, str) for t in self.targets):
            raise LocoeditError(f"targets {self.targets!r} must be text (an empty target removes the concept)")
        if len(self.targets) not in (1, len(self.concepts)):
            raise LocoeditError(
                f"got {len(self.targets)} targets for {len(self.concepts)} concepts; give one --target for all "
                "concepts or one per concept, in the same order"
            )
        for concept, target in zip(self.concepts, self.all_targets):
            if concept.strip().lower() == target.strip().lower():
                raise LocoeditError(f"target {target!r} equals its concept; the target must differ from the concept")
        check_positive("lambda_key", self.lambda_key, "--lambda-key")
        check_positive("lambda_value", self.lambda_value, "--lambda-value")
        check_positive("preserve_scale", self.preserve_scale, "--preserve-scale")
        check_non_negative("preserve_neighbours", self.preserve_neighbours, "--preserve-neighbours")
        check_non_negative("preserve_general", self.preserve_general, "--preserve-general")

    @property
    def all_targets(self) -> tuple[str, ...]:
        return self.targets * len(self.concepts) if len(self.targets) == 1 else self.targets

    @property
    def prompt_set(self) -> tuple[str, ...]:
        return self.prompts or prompt_templates(self.kind)

    def pairs(self) -> list[PromptPair]:
        return prompt_pairs(self.concepts, self.all_targets, self.prompt_set)


@dataclass
class EditRows:
    concept: TextRows  # X_o
    target: TextRows  # X_t, aligned row by row with ``concept``
    pairs: list[PromptPair]

    def matrices(self, layer: CrossAttentionLayer) -> tuple[torch.Tensor, torch.Tensor]:  # [rows, in] float64 x2
        return self.concept.at(layer), self.target.at(layer)


def build_rows(adapter: Adapter, request: EditRequest) -> EditRows:
    request = with_model_defaults(request, adapter)  # what the request leaves open (token, templates)
    pairs = request.pairs()
    aligned = [aligned_positions(adapter, pair, request.token) for pair in pairs]
    concept = encode_rows(adapter, [p.prompt for p in pairs], [a for a, _ in aligned])
    target = encode_rows(adapter, [p.target_prompt for p in pairs], [b for _, b in aligned])
    return EditRows(concept, target, pairs)


@dataclass
class Preservation:
    """The preservation second moment ``C`` per input space, and how many prompts of each source went into it."""

    moments: dict[str, torch.Tensor]  # input space -> [in, in] float64
    counts: dict[str, int]  # source -> prompts

    def regulariser(self, layer: CrossAttentionLayer, lam: float) -> Regulariser:
        return Regulariser(lam, self.moments.get(input_space(layer)))


def build_preservation(adapter: Adapter, request: EditRequest, layers: list[CrossAttentionLayer]) -> Preservation:
    """``C`` = preserve_neighbours x mean over the neighbours' rows + preserve_general x mean over the general
    corpus's rows + preserve_scale x the sum over the explicit ``preserve`` prompts' rows."""
    request = with_model_defaults(request, adapter)
    spaces = spaces_of(layers)
    moments: dict[str, torch.Tensor] = {}
    counts = {"neighbours": 0, "general": 0, "explicit": len(request.preserve)}

    def add(sums: dict[str, torch.Tensor], weight: float) -> None:
        for space in spaces:
            moments[space] = weight * sums[space] + moments.get(space, 0)

    if request.preserve_neighbours > 0:
        neighbours = neighbour_concepts(adapter, request.concepts, request.kind, request.neighbours)
        prompts = neighbour_prompts(request.concepts, request.prompt_set, neighbours)
        if prompts:
            prompts = usable(adapter, prompts, "the neighbours' prompts")
            sums, rows = moment_sums(adapter, prompts, spaces)
            add(sums, request.preserve_neighbours / rows)
            counts["neighbours"] = len(prompts)
    if request.preserve_general > 0:
        source, corpus = corpus_prompts(adapter, request.preserve_corpus)
        stats = corpus_stats(adapter, corpus, request.preserve_stats)
        naming = [p for p in corpus if any(names_concept(p, c) for c in request.concepts)]
        if len(naming) == len(corpus):
            raise LocoeditError(
                f"every prompt of preservation corpus {source} names an edited concept, so none is "
                "left to preserve; give a corpus of other prompts (--preserve-corpus)"
            )
        sums, rows = dict(stats.sums), stats.rows
        if naming:  # left out: the edit is meant to change them
            left_out, left_out_rows = moment_sums(adapter, naming, spaces_of(adapter.layers))
            sums = {space: sums[space] - left_out[space] for space in sums}
            rows -= left_out_rows
        add(sums, request.preserve_general / rows)
        counts["general"] = len(corpus) - len(naming)
    if request.preserve:
        explicit = encode_rows(adapter, list(request.preserve), all_real_positions(adapter, request.preserve))
        add(
            {space: explicit.at(layer).T @ explicit.at(layer) for space, layer in spaces.items()},
            request.preserve_scale,
        )
    return Preservation(moments, counts)


def compute_edit(
    adapter: Adapter,
    request: EditRequest,
    layers: list[CrossAttentionLayer] | None = None,
    progress: ProgressCallback | None = None,
) -> EditDelta:
    """The LocoEdit of ``request`` on ``adapter``'s model, as a delta. The model is not modified."""
    request = with_model_defaults(request, adapter)
    if layers is None:
        auto = auto_localization(request, request.pairs()) if request.layers == "auto" else None
        layers = resolve_layers(adapter, request.layers, auto, progress)
    rows = build_rows(adapter, request)
    preservation = build_preservation(adapter, request, layers)
    tensors, factors, originals, report = {}, {}, {}, []
    workspace = Workspace()
    regularisers: dict[tuple[str, float], Regulariser] = {}  # one factorisation per input space and lambda
    for layer in layers:
        sources, targets = rows.matrices(layer)  # [rows, in] float64
        for projection, lam in zip(layer.edit_projections, (request.lambda_key, request.lambda_value)):
            name = f"{layer.name}.{projection}.weight"
            weight = getattr(layer.module, projection).weight  # [out, in]
            key = (input_space(layer), lam)
            regulariser = regularisers.setdefault(key, preservation.regulariser(layer, lam))
            if len(sources) < min(weight.shape):  # the update S^T V has rank <= rows: keep its factors
                update, objective = edit_factors(weight, sources, targets, regulariser, workspace)
                check_low_rank_fits(weight, update, name)
                factors[name] = LowRank(update.up.cpu(), update.down.cpu())
            else:
                new, objective = edit_matrix(weight, sources, targets, regulariser, name, workspace)
                tensors[name] = new.cpu()
            originals[name] = describe_original(weight)
            report.append({"parameter": name, "objective": objective})
    settings = request.to_json()
    settings.update(
        {
            "prompt_pairs": [[p.prompt, p.target_prompt] for p in rows.pairs],
            "concept_rows": len(rows.concept),
            "concept_positions": rows.concept.positions(),
            "preserve_prompts": preservation.counts,
            "objectives": report,
        }
    )
    return EditDelta.computed_on(
        adapter.denoiser, request.model, "locoedit", layers, tensors, originals, settings, factors
    )


def edit_to_file(
    request: EditRequest, out: str | Path, adapter: Adapter | None = None, progress: ProgressCallback | None = None
) -> EditDelta:
    """Load the model (unless an adapter is given), compute the edit and write it to ``out`` (atomically); on any
    error nothing is written. The CLI's ``edit`` command."""
    check_delta_path(out)
    adapter = adapter or load_adapter(request.model, dtype_named(request.dtype), request.device)
    delta = compute_edit(adapter, request, progress=progress)
    delta.save(out)
    return delta
