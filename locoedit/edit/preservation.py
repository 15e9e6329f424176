"""What an edit preserves: the second moment ``C = sum_p x_p x_p^T`` of text rows whose keys and values should stay.

Three sources, each weighted on its own (:func:`locoedit.edit.key_value.build_preservation`):

- **neighbours**: the edit's own prompts with each neighbouring concept in the concept's place (concepts of the same
  group: the other shapes, the other artists), from the model folder's ``locoedit.json`` (``edit.neighbours``), else
  ``locoedit/data/neighbours.json``. Weighted by ``preserve_neighbours`` times their mean ``x x^T``;
- **general**: a prompt corpus, the model folder's (the toy world: captions from its training distribution), else
  ``locoedit/data/prompt_corpus.txt``, or ``--preserve-corpus FILE``. Prompts that name an edited concept (its text,
  or its last word: "sun" for "the sun") are left out. Weighted by ``preserve_general`` times their mean ``x x^T``.
  The sums are cached on disk per (model, corpus) (:class:`CorpusStats`), so only the left-out prompts are encoded
  again;
- **explicit** ``--preserve`` prompts, weighted by ``preserve_scale`` per row (a row mapped to itself).

Rows are every position the denoiser reads (padding included: a causal text encoder carries a prompt into its padded
rows). Means make a weight mean the same whatever the number of prompts. Layers with their own norm of the text
(DeepFloyd IF's ``norm_cross``) have their own input space; every other layer of a model reads the same rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file

from locoedit.core.errors import LocoeditError
from locoedit.core.io import write_safetensors
from locoedit.edit.rows import STREAM_SEEDS, TextRows, encode_rows, prompt_pairs
from locoedit.models import Adapter
from locoedit.models.base import find_phrase
from locoedit.models.layers import CrossAttentionLayer

STATS_FORMAT = "locoedit.stats/1"
SHARED_SPACE = "text"  # the input space of every layer without its own norm of the text
_BATCH = 64  # prompts encoded at once
_SUMMARY = "summary:"  # the key prefix of a stats file's summary rows


def input_space(layer: CrossAttentionLayer) -> str:
    """Which rows ``layer`` reads: the shared text states, or rows of its own (a norm of the text, or a joint
    block's text stream)."""
    if layer.stream != "cross":
        return layer.name
    return SHARED_SPACE if layer.module.norm_cross is None else layer.name


# --------------------------------------------------------------------------------------------------- corpora


def read_corpus(path: str | Path) -> tuple[str, ...]:
    """Prompts of a corpus file: one per line; blank lines and lines starting with ``#`` are skipped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LocoeditError(
            f"preservation corpus {path} does not exist; give a text file with one prompt per line (--preserve-corpus)"
        )
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise LocoeditError(f"preservation corpus {path} is not UTF-8 text; give one prompt per line") from None
    prompts = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not prompts:
        raise LocoeditError(f"preservation corpus {path} holds no prompts; write one prompt per line")
    return prompts


def shipped_corpus() -> Path:
    return Path(str(resources.files("locoedit").joinpath("data/prompt_corpus.txt")))


def corpus_for(adapter: Adapter, corpus: str | None) -> Path:
    """The general corpus file: ``corpus`` if given, else the model folder's, else locoedit's shipped one."""
    if corpus is not None:
        return Path(corpus).expanduser()
    recommended = adapter.recommended.edit
    return Path(recommended.corpus) if recommended and recommended.corpus else shipped_corpus()


def corpus_prompts(adapter: Adapter, corpus: str | None) -> tuple[Path, list[str]]:
    """The general corpus file (:func:`corpus_for`) and its prompts that the model's text encoder takes whole: what
    :func:`compute_stats` and :func:`corpus_stats` expect."""
    source = corpus_for(adapter, corpus)
    return source, usable(adapter, read_corpus(source), f"preservation corpus {source}")


def names_concept(prompt: str, concept: str) -> bool:
    """Whether ``prompt`` names ``concept``: its text, or its last word ("sun" for "the sun")."""
    last_word = concept.split()[-1]
    return (
        find_phrase(prompt, concept) is not None
        or re.search(rf"\b{re.escape(last_word)}\b", prompt, re.IGNORECASE) is not None
    )


def neighbour_concepts(adapter: Adapter, concepts, kind: str, given=()) -> tuple[str, ...]:
    """The concepts an edit of ``concepts`` should leave alone: ``given``, else the group that holds a concept
    (the other shapes for a shape), else every group of ``kind``; the edited concepts themselves excluded."""
    edited = {c.strip().lower() for c in concepts}
    if given:
        return tuple(n for n in given if n.strip().lower() not in edited)
    recommended = adapter.recommended.edit
    groups = recommended.neighbours if recommended and recommended.neighbours else shipped_neighbours()
    chosen = [
        members
        for per_kind in groups.values()
        for members in per_kind.values()
        if edited & {m.lower() for m in members}
    ]
    if not chosen:
        chosen = list(groups.get(kind, {}).values())
    found = dict.fromkeys(m for members in chosen for m in members if m.lower() not in edited)
    return tuple(found)


def shipped_neighbours() -> dict[str, dict[str, list[str]]]:
    """kind -> group -> concepts, for real models (``locoedit/data/neighbours.json``)."""
    data = json.loads(resources.files("locoedit").joinpath("data/neighbours.json").read_text())
    return {kind: groups for kind, groups in data.items() if not kind.startswith("_")}


def neighbour_prompts(concepts, prompts, neighbours) -> list[str]:
    """The edit's prompts with each neighbour in place of each concept."""
    found = []
    for concept in concepts:
        for neighbour in neighbours:
            found += [
                pair.target_prompt
                for pair in prompt_pairs((concept,), (neighbour,), prompts)
                if not names_concept(pair.target_prompt, concept)
            ]
    return list(dict.fromkeys(found))


def preserved_neighbour_prompts(adapter: Adapter, request) -> list[str]:
    """The edit's prompts with each neighbouring concept (:func:`neighbour_concepts`) in place of each concept,
    those the text encoder takes whole."""
    neighbours = neighbour_concepts(adapter, request.concepts, request.kind, request.neighbours)
    prompts = neighbour_prompts(request.concepts, request.prompt_set, neighbours)
    return usable(adapter, prompts, "the neighbours' prompts") if prompts else []


def general_corpus(adapter: Adapter, request) -> tuple[Path, list[str], list[str]]:
    """The general corpus file, its usable prompts (:func:`corpus_prompts`), and those of them that name an edited
    concept (left out of the preservation: the edit is meant to change them); refused when every prompt does."""
    source, corpus = corpus_prompts(adapter, request.preserve_corpus)
    naming = [p for p in corpus if any(names_concept(p, c) for c in request.concepts)]
    if len(naming) == len(corpus):
        raise LocoeditError(
            f"every prompt of preservation corpus {source} names an edited concept, so none is "
            "left to preserve; give a corpus of other prompts (--preserve-corpus)"
        )
    return source, corpus, naming


def padded_rows(adapter: Adapter, prompts) -> TextRows:
    """Every position the denoiser reads of each prompt, padding included."""
    prompts = list(prompts)
    rows = adapter.tokenize(prompts[0]).rows
    return encode_rows(adapter, prompts, [list(range(rows))] * len(prompts))


def moment_sums(
    adapter: Adapter, prompts, spaces: dict[str, CrossAttentionLayer], summaries: dict | None = None
) -> tuple[dict[str, torch.Tensor], int]:
    """``sum x x^T`` [in, in] float64 over every padded row of ``prompts``, per input space; and the row count.
    With ``summaries`` (a dict), also each prompt's summary row per input space into it ([prompts, in] float64,
    :func:`encode_summaries`), from the same encoding."""
    sums: dict[str, torch.Tensor] = {}
    parts: dict[str, list[torch.Tensor]] = {space: [] for space in spaces}
    count = 0
    prompts = list(prompts)
    for start in range(0, len(prompts), _BATCH):
        chunk = prompts[start : start + _BATCH]
        batch = padded_rows(adapter, chunk)
        if summaries is not None:  # each prompt's end row, in the [prompts x rows] batch
            rows = adapter.tokenize(chunk[0]).rows
            ends = torch.tensor([adapter.tokenize(p).eos for p in chunk]) + torch.arange(len(chunk)) * rows
        for space, layer in spaces.items():
            per_step = batch.per_step(layer)  # [prompts x rows, steps, in]
            x = per_step.reshape(-1, per_step.shape[-1])
            sums[space] = sums[space] + x.T @ x if space in sums else x.T @ x
            if summaries is not None:
                parts[space].append(per_step[ends.to(x.device)].mean(1))
        count += len(batch) * batch.samples
    if summaries is not None:
        summaries.update({space: torch.cat(rows) for space, rows in parts.items()})
    return sums, count


def encode_summaries(
    adapter: Adapter, prompts, spaces: dict[str, CrossAttentionLayer]
) -> dict[str, torch.Tensor]:  # input space -> [prompts, in] float64
    """Each prompt's *summary row*, the row at its end token, as each input space's layers read it: where a causal
    text encoder has read the whole prompt (a bidirectional one has, at every row)."""
    prompts = list(prompts)
    ends = [[adapter.tokenize(p).eos] for p in prompts]
    out: dict[str, list[torch.Tensor]] = {space: [] for space in spaces}
    for start in range(0, len(prompts), _BATCH):
        rows = encode_rows(adapter, prompts[start : start + _BATCH], ends[start : start + _BATCH])
        for space, layer in spaces.items():
            out[space].append(rows.per_step(layer).mean(1))
    return {space: torch.cat(parts) for space, parts in out.items()}


def usable(adapter: Adapter, prompts, where: str) -> list[str]:
    """``prompts`` the text encoder takes whole; a clear error when there are none."""
    kept = []
    for prompt in prompts:
        try:
            adapter.check_length(prompt)
        except LocoeditError:
            continue
        kept.append(prompt)
    if not kept:
        raise LocoeditError(
            f"{where} has no usable prompts (every one is empty of other text or too long for the "
            "text encoder); give prompts that do not name the edited concept"
        )
    return kept


# --------------------------------------------------------------------------------------------------- cached stats


def text_fingerprint(adapter: Adapter) -> str:
    """sha256 over what the text rows depend on: the text encoders' parameters (names, shapes and a strided sample
    of the values, so that reading it costs milliseconds), and the layers' own norms of the text; for a
    joint-attention model the denoiser's parameters and the sampling settings the rows are captured with."""
    digest = hashlib.sha256(type(adapter).__name__.encode())
    modules = [(name, getattr(adapter.pipe, name)) for name in adapter.text_encoder_names]
    if adapter.joint_attention:  # joint blocks read the denoiser's own text stream, captured while sampling
        modules.append((adapter.denoiser_name, adapter.denoiser))
        captured = {"settings": adapter.default_settings().to_json(), "seeds": list(STREAM_SEEDS)}
        digest.update(json.dumps(captured, sort_keys=True).encode())
    else:
        modules += [
            (layer.name, layer.module.norm_cross) for layer in adapter.layers if layer.module.norm_cross is not None
        ]
    for owner, module in modules:
        for name, parameter in module.state_dict().items():
            flat = parameter.detach().flatten()
            sample = flat[:: max(1, flat.numel() // 4096)].to(torch.float64).cpu()
            digest.update(f"{owner}.{name}{list(parameter.shape)}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def corpus_digest(prompts) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()


def cache_folder() -> Path:
    """Where computed statistics are kept: ``$LOCOEDIT_CACHE/stats``, else ``~/.cache/locoedit/stats``."""
    root = os.environ.get("LOCOEDIT_CACHE") or Path.home() / ".cache" / "locoedit"
    return Path(root).expanduser() / "stats"


@dataclass(frozen=True)
class CorpusStats:
    """``sum x x^T`` of a corpus's padded text rows per input space, for one model's text encoders."""

    sums: dict[str, torch.Tensor]  # input space -> [in, in] float64
    rows: int
    prompts: int
    model_fingerprint: str
    corpus_digest: str
    # input space -> [prompts, in]: each prompt's summary row (entanglement mining); files written before lack it
    summaries: dict[str, torch.Tensor] | None = None

    def save(self, path: str | Path) -> Path:
        metadata = {
            "format": STATS_FORMAT,
            "rows": str(self.rows),
            "prompts": str(self.prompts),
            "model_fingerprint": self.model_fingerprint,
            "corpus_digest": self.corpus_digest,
        }
        tensors = {k: v.contiguous() for k, v in self.sums.items()}
        tensors.update({_SUMMARY + k: v.to(torch.float32).contiguous() for k, v in (self.summaries or {}).items()})
        return write_safetensors(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | Path) -> CorpusStats:
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), "pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except Exception as error:  # missing, truncated or not safetensors: each fails its own way
            raise LocoeditError(
                f"statistics file {path} cannot be read ({type(error).__name__}); compute it again "
                "with `locoedit stats`"
            ) from None
        if metadata.get("format") != STATS_FORMAT:
            raise LocoeditError(
                f"{path} is not a locoedit statistics file ({STATS_FORMAT}); compute one with "
                "`locoedit stats MODEL --out FILE`"
            )
        sums = {k: v for k, v in tensors.items() if not k.startswith(_SUMMARY)}
        summaries = {k.removeprefix(_SUMMARY): v for k, v in tensors.items() if k.startswith(_SUMMARY)}
        return cls(
            sums,
            int(metadata["rows"]),
            int(metadata["prompts"]),
            metadata["model_fingerprint"],
            metadata["corpus_digest"],
            summaries or None,
        )

    def check_for(self, adapter_fingerprint: str, digest: str, source: str) -> None:
        if self.model_fingerprint != adapter_fingerprint:
            raise LocoeditError(
                f"statistics {source} were computed for another model's text encoders; compute them "
                "for this model with `locoedit stats MODEL`"
            )
        if self.corpus_digest != digest:
            raise LocoeditError(
                f"statistics {source} were computed on another corpus; compute them for this one with "
                "`locoedit stats MODEL --corpus FILE`"
            )


def compute_stats(adapter: Adapter, prompts) -> CorpusStats:
    """The statistics of a corpus's usable prompts (:func:`corpus_prompts`), for every input space of the model."""
    return _compute(adapter, prompts, text_fingerprint(adapter), corpus_digest(prompts))


def _compute(adapter: Adapter, prompts: list[str], fingerprint: str, digest: str) -> CorpusStats:
    summaries: dict[str, torch.Tensor] = {}
    sums, rows = moment_sums(adapter, prompts, spaces_of(adapter.layers), summaries)
    return CorpusStats(sums, rows, len(prompts), fingerprint, digest, summaries)


def spaces_of(layers) -> dict[str, CrossAttentionLayer]:
    """One layer per input space (the first that reads it)."""
    spaces: dict[str, CrossAttentionLayer] = {}
    for layer in layers:
        spaces.setdefault(input_space(layer), layer)
    return spaces


def corpus_stats(adapter: Adapter, prompts, stats_file: str | Path | None = None) -> CorpusStats:
    """The statistics of usable ``prompts`` (:func:`corpus_prompts`) on ``adapter``'s model: from ``stats_file``
    (refused if it was computed for another model or corpus), else from the cache, else computed and cached."""
    fingerprint, digest = text_fingerprint(adapter), corpus_digest(prompts)
    if stats_file is not None:
        stats = CorpusStats.load(stats_file)
        stats.check_for(fingerprint, digest, str(stats_file))
        return stats
    # "-s2": statistics with summary rows, which readers older than entanglement mining cannot load
    cached = cache_folder() / f"{fingerprint[:20]}-{digest[:20]}-s2.safetensors"
    if cached.is_file():
        try:
            stats = CorpusStats.load(cached)
            stats.check_for(fingerprint, digest, str(cached))
            if stats.summaries is not None:  # entries cached before mining lack the summary rows: recomputed
                return stats
        except LocoeditError:
            pass  # a damaged or colliding cache entry is recomputed and replaced
    stats = _compute(adapter, prompts, fingerprint, digest)
    stats.save(cached)
    return stats
