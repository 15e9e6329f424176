"""Which text rows an edit reads: prompts that carry a concept, and the token positions chosen in them.

LocoEdit and the neuron-level edit choose their concept rows with the same code (:func:`concept_positions`).

Which rows (``token``):
  ``last-subject``  the concept's last token, paired with the target's last token (the paper's default);
  ``all``           every concept token; paired with the target's tokens by ``stretch_alignment`` when the counts
                    differ (first with first, last with last, monotone in between);
  ``eos``           the end-of-sequence token of the concept prompt, paired with the target prompt's;
  ``from-concept``  the concept's tokens and every later position, EOS and padding included: the denoiser attends
                    to every padded row, and a causal CLIP encoder colours all of them with the concept (T5 is
                    bidirectional, so there it is a wider choice, not a complete one). The concept part is paired
                    as in ``all``; the tail after it position by position (prompts from one template have equal
                    tails), stretched if the tails differ.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import torch

from locoedit.core.errors import LocoeditError
from locoedit.interventions.capture import TextStreamCapture, row_index
from locoedit.models import Adapter, PromptTokens
from locoedit.models.base import find_phrase
from locoedit.models.layers import CrossAttentionLayer

PLACEHOLDER = "{c}"


@dataclass(frozen=True)
class ConceptPrompt:
    concept: str
    prompt: str  # a prompt with the concept
    start: int  # character position of the concept in ``prompt``


@dataclass(frozen=True)
class PromptPair:
    concept: str
    target: str
    prompt: str  # a prompt with the concept
    target_prompt: str  # the same prompt with the target in the concept's place
    concept_start: int  # character position of the concept in ``prompt``
    target_start: int  # character position of the target in ``target_prompt``

    @property
    def concept_prompt(self) -> ConceptPrompt:
        return ConceptPrompt(self.concept, self.prompt, self.concept_start)


def _replace(prompt: str, start: int, end: int, target: str) -> str:
    """``prompt`` with ``prompt[start:end]`` replaced by ``target``; an empty target also drops one adjacent space."""
    if target:
        return prompt[:start] + target + prompt[end:]
    before, after = prompt[:start], prompt[end:]
    return (before.rstrip(" ") + (" " if after.startswith(" ") and before.strip() else "") + after.lstrip(" ")).strip()


def concept_prompts(concepts, prompts) -> list[ConceptPrompt]:
    """Every (concept, prompt) combination that carries the concept, concept-major.

    A prompt with ``{c}`` is a template used for every concept; a prompt without it is used for the concepts whose
    text it contains.
    """
    for prompt in prompts:
        if PLACEHOLDER not in prompt and not any(find_phrase(prompt, c) is not None for c in concepts):
            raise LocoeditError(
                f"prompt {prompt!r} contains none of the concepts {list(concepts)}; write {{c}} where the concept goes"
            )
    found: list[ConceptPrompt] = []
    for concept in (c.strip() for c in concepts):
        before = len(found)
        for prompt in prompts:
            if PLACEHOLDER in prompt:
                found.append(ConceptPrompt(concept, prompt.replace(PLACEHOLDER, concept), prompt.index(PLACEHOLDER)))
            elif (start := find_phrase(prompt, concept)) is not None:
                found.append(ConceptPrompt(concept, prompt, start))
        if len(found) == before:
            raise LocoeditError(f"no prompt mentions concept {concept!r}; add a prompt with it or with {{c}}")
    return found


def prompt_pairs(concepts, targets, prompts) -> list[PromptPair]:
    """One (concept prompt, target prompt) pair per concept and prompt; ``targets`` aligned with ``concepts``."""
    target_of = {c.strip(): t.strip() for c, t in zip(concepts, targets)}
    pairs = []
    for item in concept_prompts(concepts, prompts):
        target = target_of[item.concept]
        end = item.start + len(item.concept)
        pairs.append(
            PromptPair(
                item.concept,
                target,
                item.prompt,
                _replace(item.prompt, item.start, end, target),
                item.start,
                item.start,
            )
        )
    return pairs


def stretch_alignment(count: int, into: int) -> list[int]:
    """For each of ``count`` concept tokens, the index of its partner among ``into`` target tokens.

    Equal counts pair position by position. Otherwise first pairs with first and last with last, the rest evenly in
    between (so several concept tokens may share a target token, or target tokens may go unused); a single concept
    token pairs with the target's last token, its subject.
    """
    if count == into:
        return list(range(count))
    if count == 1:
        return [into - 1]
    return [round(i * (into - 1) / (count - 1)) for i in range(count)]


def _concept_span(tokens: PromptTokens, item: ConceptPrompt) -> list[int]:
    return tokens.phrase_positions(item.concept, item.start)


def _select(span: list[int], rows: int, token: str | None) -> list[int]:
    """What ``token`` (any choice but ``eos``) selects, given a phrase's token span and the padded length."""
    if token == "last-subject":
        return [span[-1]]
    if token == "all":
        return list(span)
    if token == "from-concept":
        return span + list(range(span[-1] + 1, rows))
    raise ValueError(f"token {token!r} is not a row choice; resolve the request's defaults first (with_model_defaults)")


def concept_positions(adapter: Adapter, item: ConceptPrompt, token: str | None) -> list[int]:
    """The token positions of ``item.prompt`` that ``token`` selects for its concept."""
    tokens = adapter.tokenize(item.prompt)
    if token == "eos":
        return [tokens.eos]
    return _select(_concept_span(tokens, item), tokens.rows, token)


def aligned_positions(adapter: Adapter, pair: PromptPair, token: str | None) -> tuple[list[int], list[int]]:
    """Token positions in the concept prompt (those of :func:`concept_positions`) and, aligned one to one, in the
    target prompt."""
    tokens, target = adapter.tokenize(pair.prompt), adapter.tokenize(pair.target_prompt)
    if token == "eos":
        return [tokens.eos], [target.eos]
    span = _concept_span(tokens, pair.concept_prompt)
    source = _select(span, tokens.rows, token)
    if pair.target:
        replaced = _concept_span(target, ConceptPrompt(pair.target, pair.target_prompt, pair.target_start))
    else:
        # Removal: the concept's rows become the row that now stands where the concept was (the next word, or EOS).
        following = target.positions_of(pair.target_start, len(target.text))
        replaced = [following[0] if following else target.eos]
    if token == "last-subject":
        return source, [replaced[-1]]
    paired = [replaced[j] for j in stretch_alignment(len(span), len(replaced))]
    tail = source[len(span) :]  # from-concept: every position after the concept
    if not tail:
        return source, paired
    target_tail = list(range(replaced[-1] + 1, target.rows)) or [replaced[-1]]
    return source, paired + [target_tail[j] for j in stretch_alignment(len(tail), len(target_tail))]


# The noises every prompt is generated from while its joint-attention text rows are captured: the text stream also
# reads the image, so one trajectory would fit the edit to one image.
STREAM_SEEDS = (0, 1)


@dataclass
class TextRows:
    """Selected token rows of a batch of prompts, as a layer's key/value projections read them.

    Cross-attention layers read the encoded prompts (``states``). Joint-attention blocks read the denoiser's own
    text stream, different per block and denoising step: ``stream`` holds each dual-stream block's rows, captured
    while the prompts were generated (:class:`~locoedit.interventions.capture.TextStreamCapture`).
    """

    prompt_index: torch.Tensor  # [rows] long
    position_index: torch.Tensor  # [rows] long
    prompts: int
    states: torch.Tensor | None = None  # cross-attention: [prompts, tokens, dim] attention states (model dtype)
    stream: dict[str, torch.Tensor] | None = None  # joint attention: block name -> [rows, seeds x steps, dim]

    def __len__(self) -> int:
        return int(self.prompt_index.numel())

    def positions(self) -> list[list[int]]:
        """The token positions selected in each prompt, as recorded in a delta's settings."""
        chosen: list[list[int]] = [[] for _ in range(self.prompts)]
        for prompt, position in zip(self.prompt_index.tolist(), self.position_index.tolist()):
            chosen[prompt].append(position)
        return chosen

    @property
    def samples(self) -> int:
        """How many times each row was captured (:meth:`per_step`): 1 for cross-attention, which reads the same
        rows at every step; seeds x steps for joint attention."""
        return 1 if self.stream is None else next(iter(self.stream.values())).shape[1]

    def per_step(self, layer: CrossAttentionLayer) -> torch.Tensor:  # [rows, samples, dim] float64
        """The rows as ``layer``'s key/value projections receive them, at each denoising step of each capture seed
        (cross-attention reads the same rows at every step: one).

        Layers with ``norm_cross`` (DeepFloyd IF's group norm) normalise the full padded prompt first, then rows are
        picked, exactly as the attention processor does.
        """
        if self.stream is not None:
            if layer.name not in self.stream:
                raise LocoeditError(
                    f"layer {layer.index} ({layer.block}) reads no captured text stream: only dual-stream joint "
                    "blocks have one"
                )
            return self.stream[layer.name].to(torch.float64)
        assert self.states is not None  # one of the two is always set (encode_rows)
        states = self.states
        with torch.no_grad():
            attention = typing.cast(typing.Any, layer.module)  # diffusers' Attention
            if attention.norm_cross is not None:
                states = attention.norm_encoder_hidden_states(states)
            return states[self.prompt_index, self.position_index][:, None].to(torch.float64)

    def second_moment(self, layer: CrossAttentionLayer) -> torch.Tensor:  # [dim, dim] float64
        """``sum x x^T`` over the rows, each row's steps averaged (a row counts once, however many steps)."""
        rows = self.per_step(layer)
        flat = rows.reshape(-1, rows.shape[-1])
        return flat.T @ flat / rows.shape[1]

    def at(self, layer: CrossAttentionLayer) -> torch.Tensor:  # [rows x steps, dim] float64
        """:meth:`per_step`'s rows, each row's steps one after another."""
        rows = self.per_step(layer)
        return rows.reshape(-1, rows.shape[-1])


def encode_rows(adapter: Adapter, prompts: list[str], positions: list[list[int]]) -> TextRows:
    """Encode ``prompts`` and select ``positions[i]`` of prompt ``i``. On a joint-attention denoiser the prompts
    are generated (from each of :data:`STREAM_SEEDS`' noises, with the model's own sampling settings) and the
    positions kept as each dual-stream block receives them, at every step."""
    prompt_index, position_index = row_index(positions)
    encoded = adapter.encode(list(prompts))
    if adapter.joint_attention:
        copies = len(STREAM_SEEDS)
        capture = TextStreamCapture(adapter.layers, list(positions) * copies)
        seeds = [seed for seed in STREAM_SEEDS for _ in prompts]
        repeated = encoded.take(list(range(len(prompts))) * copies)  # encoded once, generated from every seed
        adapter.generate(repeated, seeds, adapter.default_settings(), [capture])
        stream = {  # [copies x rows, steps, dim] -> [rows, copies x steps, dim]
            name: rows.unflatten(0, (copies, -1)).transpose(0, 1).flatten(1, 2) for name, rows in capture.rows().items()
        }
        return TextRows(prompt_index, position_index, len(prompts), stream=stream)
    with torch.no_grad():
        states = adapter.attention_states(encoded.conditional)  # [prompts, tokens, dim]
    tokens = states.shape[1]
    for prompt, chosen in zip(prompts, positions):
        if chosen and max(chosen) >= tokens:
            raise LocoeditError(f"prompt {prompt!r}: token position {max(chosen)} is beyond the {tokens} encoded")
    device = states.device
    return TextRows(prompt_index.to(device), position_index.to(device), len(prompts), states=states)


def all_real_positions(adapter: Adapter, prompts) -> list[list[int]]:
    """Every non-padding position of each prompt (start and end tokens included)."""
    return [list(range(adapter.tokenize(p).length)) for p in prompts]
