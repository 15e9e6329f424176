"""LocoEdit: rewrite the key and value projections of the localized cross-attention layers in closed form.

For each edited projection ``W`` [out, in] the concept's text rows ``X_o`` [n, in] should produce what the target's
rows ``X_t`` [n, in] produce today, while ``W`` moves as little as possible:

    W_new = argmin ||X_o W_new^T - X_t W^T||^2 + lambda ||W_new - W||^2
          = (W X_t^T X_o + lambda W)(X_o^T X_o + lambda I)^{-1}

solved in float64 whatever the model's dtype, by a linear solve (never an explicit inverse). Preservation prompts
add rows that map to themselves (``X_p -> X_p``), as UCE does.

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

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import torch

from locoedit.adapters import Adapter, PromptTokens, load_adapter
from locoedit.delta import EditDelta, describe_original
from locoedit.errors import LocoeditError
from locoedit.layers import CrossAttentionLayer

logger = logging.getLogger(__name__)

TOKEN_CHOICES = ("last-subject", "all", "eos", "from-concept")
KINDS = ("style", "object", "fact")
PLACEHOLDER = "{c}"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def prompt_templates(kind: str) -> tuple[str, ...]:
    """The shipped templates for ``kind`` (style, object, fact), from ``locoedit/data/prompt_templates.json``."""
    if kind not in KINDS:
        raise LocoeditError(f"kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    data = json.loads(resources.files("locoedit").joinpath("data/prompt_templates.json").read_text())
    return tuple(data[kind])


def parse_layers(text: str) -> tuple[int, ...] | str:
    """CLI form of ``--layers``: ``auto``, comma-separated indices ``8,9``, or a LocoGen run folder."""
    text = text.strip()
    if text == "auto":
        return "auto"
    if re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
        return tuple(int(part) for part in text.split(","))
    return text


def _tuple(value) -> tuple:
    return (value,) if isinstance(value, (str, int)) else tuple(value)


def _check_positive(name: str, value: float, flag: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise LocoeditError(f"{name} must be a finite number > 0, got {value!r}; pass e.g. {flag} 0.1")


@dataclass(frozen=True)
class EditRequest:
    """A LocoEdit of one or more concepts. Validates on construction; serialises to JSON."""

    model: str
    concepts: tuple[str, ...]
    targets: tuple[str, ...]  # one per concept, or one for all
    kind: str = "object"  # which shipped templates to use when ``prompts`` is empty
    prompts: tuple[str, ...] = ()  # templates with "{c}", or prompts that contain a concept's text
    layers: tuple[int, ...] | str = "auto"  # indices, "auto" (run LocoGen first), or a LocoGen run folder
    preserve: tuple[str, ...] = ()  # prompts whose keys and values should stay
    preserve_scale: float = 1.0  # weight of the preservation rows relative to the concept rows
    lambda_key: float = 0.1
    lambda_value: float = 0.1
    token: str = "last-subject"
    dtype: str = "float32"
    device: str | None = None
    auto_window: int = 2  # LocoGen window size for layers="auto"
    auto_steps: int | None = None  # LocoGen denoising steps for layers="auto"; None = the family's default
    auto_seeds: tuple[int, ...] = (0, 1, 2, 3)

    def __post_init__(self):
        for name in ("concepts", "targets", "prompts", "preserve", "auto_seeds"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if not self.concepts or any(not c.strip() for c in self.concepts):
            raise LocoeditError("concepts is empty or holds an empty string; give at least one --concept with text")
        if len(self.targets) not in (1, len(self.concepts)):
            raise LocoeditError(
                f"got {len(self.targets)} targets for {len(self.concepts)} concepts; give one --target for all "
                "concepts or one per concept, in the same order"
            )
        for concept, target in zip(self.concepts, self.all_targets):
            if concept.strip().lower() == target.strip().lower():
                raise LocoeditError(f"target {target!r} equals its concept; the target must differ from the concept")
        if self.kind not in KINDS:
            raise LocoeditError(f"kind {self.kind!r} is unknown; use one of {', '.join(KINDS)} (--kind)")
        if any(not p.strip() for p in self.prompts) or any(not p.strip() for p in self.preserve):
            raise LocoeditError("a prompt or preservation prompt is empty; every --prompt and --preserve needs text")
        if self.token not in TOKEN_CHOICES:
            raise LocoeditError(f"token {self.token!r} is unknown; use one of {', '.join(TOKEN_CHOICES)} (--token)")
        _check_positive("lambda_key", self.lambda_key, "--lambda-key")
        _check_positive("lambda_value", self.lambda_value, "--lambda-value")
        _check_positive("preserve_scale", self.preserve_scale, "--preserve-scale")
        if self.dtype not in DTYPES:
            raise LocoeditError(f"dtype {self.dtype!r} is unknown; use one of {', '.join(DTYPES)}")
        _check_layer_spec(self.layers)
        if not isinstance(self.auto_window, int) or self.auto_window < 1:
            raise LocoeditError(f"auto_window {self.auto_window!r} must be an integer >= 1")
        if not self.auto_seeds:
            raise LocoeditError("auto_seeds is empty; give at least one seed for LocoGen")

    @property
    def all_targets(self) -> tuple[str, ...]:
        return self.targets * len(self.concepts) if len(self.targets) == 1 else self.targets

    @property
    def prompt_set(self) -> tuple[str, ...]:
        return self.prompts or prompt_templates(self.kind)

    def to_json(self) -> dict:
        data = asdict(self)
        for name in ("concepts", "targets", "prompts", "preserve", "auto_seeds"):
            data[name] = list(data[name])
        if isinstance(self.layers, tuple):
            data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_json(cls, data: dict) -> EditRequest:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _check_layer_spec(layers) -> None:
    if isinstance(layers, str):
        if layers != "auto" and not (Path(layers) / "localization.json").is_file():
            raise LocoeditError(
                f"layers {layers!r} is neither 'auto', nor indices like 8,9, nor a LocoGen run folder with "
                "localization.json; run `locoedit localize` first or give the indices"
            )
        return
    if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
        raise LocoeditError(f"layers {layers!r} must be non-empty non-negative indices, e.g. --layers 8,9")
    if len(set(layers)) != len(layers):
        raise LocoeditError(f"layers {list(layers)} repeats an index; give each layer once")


# ---------------------------------------------------------------------------------------------------- closed form


def closed_form_edit(
    weight: torch.Tensor,  # [out, in] W
    sources: torch.Tensor,  # [n, in] X_o: rows whose outputs should change
    targets: torch.Tensor,  # [n, in] X_t: rows whose current outputs X_t W^T the sources should produce
    lam: float,
) -> torch.Tensor:  # [out, in] W_new, float64
    """W_new = argmin ||X_o W_new^T - X_t W^T||^2 + lam ||W_new - W||^2 = (W X_t^T X_o + lam W)(X_o^T X_o + lam I)^{-1}.

    Written as W_new = W + Delta with Delta (X_o^T X_o + lam I) = R^T X_o and R = (X_t - X_o) W^T [n, out], the
    residual of the outputs. With fewer rows than inputs (n < in), the push-through (Woodbury) identity
    X_o (X_o^T X_o + lam I_in)^{-1} = (X_o X_o^T + lam I_n)^{-1} X_o gives Delta = S^T X_o with
    S = (X_o X_o^T + lam I_n)^{-1} R, an n x n solve; otherwise the in x in system is solved. Both exact, float64.
    """
    w = weight.detach().to(torch.float64)
    x_o = sources.to(device=w.device, dtype=torch.float64)
    x_t = targets.to(device=w.device, dtype=torch.float64)
    n, inputs = x_o.shape
    if n < inputs:
        solved, _ = _row_space_update(w, x_o, x_t, lam)  # [n, out]
        return torch.addmm(w, solved.T, x_o)  # [out, in]
    residual = (x_t - x_o) @ w.T  # [n, out]
    system = x_o.T @ x_o + lam * torch.eye(inputs, dtype=torch.float64, device=w.device)  # [in, in]
    update_t = torch.linalg.solve(system, x_o.T @ residual)  # [in, out] = Delta^T (the system is symmetric)
    return w + update_t.T


def _row_space_update(
    w: torch.Tensor,  # [out, in] float64
    x_o: torch.Tensor,  # [n, in] float64
    x_t: torch.Tensor,  # [n, in] float64
    lam: float,
) -> tuple[torch.Tensor, float]:  # S [n, out] with W_new = W + S^T X_o; and the objective at W_new
    """S = (X_o X_o^T + lam I_n)^{-1} R, R = (X_t - X_o) W^T, by a linear solve; the objective from the factors:
    X_o W_new^T - X_t W^T = G S - R and ||W_new - W||^2 = <S S^T, G>, with G = X_o X_o^T.

    Every output row of W is handled independently (column j of S depends on row j of W only), which is what lets
    :func:`edit_matrix` work through a large matrix in cache-sized blocks of rows."""
    n = x_o.shape[0]
    gram = x_o @ x_o.T  # [n, n]
    residual = (x_t - x_o) @ w.T  # [n, out]
    solved = torch.linalg.solve(gram + lam * torch.eye(n, dtype=gram.dtype, device=gram.device), residual)
    objective = ((gram @ solved - residual) ** 2).sum() + lam * ((solved @ solved.T) * gram).sum()
    return solved, float(objective)


class Workspace:
    """A reusable float64 buffer, so that editing many large matrices allocates no fresh memory per block."""

    def __init__(self):
        self._buffer = torch.empty(0, dtype=torch.float64)

    def block(self, rows: int, columns: int, device: torch.device) -> torch.Tensor:  # [rows, columns] float64
        size = rows * columns
        if self._buffer.numel() < size or self._buffer.device != device:
            self._buffer = torch.empty(size, dtype=torch.float64, device=device)
        return self._buffer[:size].view(rows, columns)


_BLOCK_BYTES = 1 << 22  # float64 rows per block: about 4 MiB, so a block stays in cache


def edit_matrix(
    weight: torch.Tensor,  # [out, in] W, any float dtype
    sources: torch.Tensor,  # [n, in] X_o
    targets: torch.Tensor,  # [n, in] X_t
    lam: float,
    name: str = "weight",
    workspace: Workspace | None = None,
    out: torch.Tensor | None = None,  # [out, in] contiguous, W's dtype: write the result here instead of new memory
) -> tuple[torch.Tensor, float]:  # W_new in W's dtype, and the (float64) objective at the unrounded W_new
    """:func:`closed_form_edit`, rounded once to W's dtype: the path used on real models.

    With n < in, W_new = W + S^T X_o with S from the n x n solve, computed in float64 one block of output rows at a
    time (each block: widen to float64, residual, solve, update, round), so the matrix is read and written once.
    Rounding is checked: an entry beyond the dtype's range is refused, never turned into inf.
    """
    x_o = sources.to(device=weight.device, dtype=torch.float64)
    x_t = targets.to(device=weight.device, dtype=torch.float64)
    if x_o.shape[0] >= x_o.shape[1]:
        new = closed_form_edit(weight, x_o, x_t, lam)
        return to_model_dtype(new, weight, name), edit_objective(weight, new, x_o, x_t, lam)
    weight = weight.detach()
    out_features, in_features = weight.shape
    rows_per_block = max(1, min(out_features, _BLOCK_BYTES // (8 * in_features)))
    workspace = workspace or Workspace()
    if out is not None and (out.shape != weight.shape or out.dtype != weight.dtype or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous {weight.dtype} tensor of shape {tuple(weight.shape)}")
    result = torch.empty_like(weight, memory_format=torch.contiguous_format) if out is None else out
    limit = torch.finfo(weight.dtype).max
    # The algebra of _row_space_update, with the n x n system factored once for all blocks.
    n = x_o.shape[0]
    gram = x_o @ x_o.T  # [n, n]
    factors, pivots = torch.linalg.lu_factor(gram + lam * torch.eye(n, dtype=gram.dtype, device=gram.device))
    difference = x_t - x_o  # [n, in]
    objective = 0.0
    for start in range(0, out_features, rows_per_block):
        rows = slice(start, min(start + rows_per_block, out_features))
        block = workspace.block(rows.stop - rows.start, in_features, weight.device)
        block.copy_(weight[rows])  # [rows, in] float64
        residual = difference @ block.T  # [n, rows]
        solved = torch.linalg.lu_solve(factors, pivots, residual)  # [n, rows], S for these rows
        objective += float(((gram @ solved - residual) ** 2).sum() + lam * ((solved @ solved.T) * gram).sum())
        block.addmm_(solved.T, x_o)  # W + S^T X_o for these rows, in place
        low, high = torch.aminmax(block)
        if not (torch.isfinite(low) and torch.isfinite(high) and -low <= limit and high <= limit):
            raise LocoeditError(
                f"{name}: the edited matrix has entries beyond what {weight.dtype} holds (max {limit:g}); raise the "
                "lambdas or edit the model in float32"
            )
        result[rows].copy_(block)
    return result, objective


def edit_objective(weight, new_weight, sources, targets, lam: float) -> float:
    """||X_o W_new^T - X_t W^T||^2 + lam ||W_new - W||^2, in float64."""
    w, w_new = weight.detach().double(), new_weight.detach().double()
    x_o, x_t = sources.detach().double(), targets.detach().double()
    return float(((x_o @ w_new.T - x_t @ w.T) ** 2).sum() + lam * ((w_new - w) ** 2).sum())


def to_model_dtype(new_weight: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    """Round a float64 result to the parameter's dtype; refuse values the dtype cannot hold."""
    limit = torch.finfo(like.dtype).max
    if not torch.isfinite(new_weight).all() or new_weight.abs().max() > limit:
        raise LocoeditError(
            f"{name}: the edited matrix has entries beyond what {like.dtype} holds (max {limit:g}); raise the lambdas "
            "or edit the model in float32"
        )
    return new_weight.to(like.dtype).contiguous()


# ---------------------------------------------------------------------------------------------------- which rows


@dataclass(frozen=True)
class PromptPair:
    concept: str
    target: str
    prompt: str  # a prompt with the concept
    target_prompt: str  # the same prompt with the target in the concept's place
    concept_start: int  # character position of the concept in ``prompt``
    target_start: int  # character position of the target in ``target_prompt``


def _find(text: str, phrase: str, near: int = 0) -> int | None:
    """Start of the occurrence of ``phrase`` in ``text`` (case-insensitive, whole words) nearest to ``near``."""
    pattern = r"(?<!\w)" + re.escape(phrase.strip().lower()) + r"(?!\w)"
    starts = [m.start() for m in re.finditer(pattern, text.lower())]
    return min(starts, key=lambda s: abs(s - near)) if starts else None


def _replace(prompt: str, start: int, end: int, target: str) -> str:
    """``prompt`` with ``prompt[start:end]`` replaced by ``target``; an empty target also drops one adjacent space."""
    if target:
        return prompt[:start] + target + prompt[end:]
    before, after = prompt[:start], prompt[end:]
    return (before.rstrip(" ") + (" " if after.startswith(" ") and before.strip() else "") + after.lstrip(" ")).strip()


def prompt_pairs(concepts, targets, prompts) -> list[PromptPair]:
    """One (concept prompt, target prompt) pair per concept and prompt.

    A prompt with ``{c}`` is a template used for every concept; a prompt without it is used for the concepts whose
    text it contains, with that text replaced by the target.
    """
    pairs = []
    for prompt in prompts:
        if PLACEHOLDER not in prompt and not any(_find(prompt, c) is not None for c in concepts):
            raise LocoeditError(
                f"prompt {prompt!r} contains none of the concepts {list(concepts)}; write {{c}} where the concept goes"
            )
    for concept, target in zip(concepts, targets):
        concept, target = concept.strip(), target.strip()
        for prompt in prompts:
            if PLACEHOLDER in prompt:
                start = prompt.index(PLACEHOLDER)
                end = start + len(PLACEHOLDER)
                pairs.append(PromptPair(concept, target, prompt.replace(PLACEHOLDER, concept),
                                        _replace(prompt, start, end, target), start, start))
            elif (start := _find(prompt, concept)) is not None:
                end = start + len(concept)
                pairs.append(PromptPair(concept, target, prompt, _replace(prompt, start, end, target), start, start))
        if not any(p.concept == concept for p in pairs):
            raise LocoeditError(f"no prompt mentions concept {concept!r}; add a prompt with it or with {{c}}")
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


def _span_positions(tokens: PromptTokens, phrase: str, near: int, prompt: str) -> list[int]:
    start = _find(tokens.text, phrase, near)
    positions = [] if start is None else tokens.positions_of(start, start + len(phrase))
    if not positions:
        raise LocoeditError(
            f"{phrase!r} is not among the tokens of prompt {prompt!r} (the encoder keeps {tokens.length} tokens, "
            "specials included); shorten the prompt or put the concept earlier"
        )
    return positions


def aligned_positions(adapter: Adapter, pair: PromptPair, token: str) -> tuple[list[int], list[int]]:
    """Token positions in the concept prompt and, aligned one to one, in the target prompt."""
    source = adapter.tokenize(pair.prompt)
    target = adapter.tokenize(pair.target_prompt)
    if token == "eos":
        return [source.eos], [target.eos]
    concept = _span_positions(source, pair.concept, pair.concept_start, pair.prompt)
    if pair.target:
        replaced = _span_positions(target, pair.target, pair.target_start, pair.target_prompt)
    else:
        # Removal: the concept's rows become the row that now stands where the concept was (the next word, or EOS).
        following = target.positions_of(pair.target_start, len(target.text))
        replaced = [following[0] if following else target.eos]
    if token == "last-subject":
        return [concept[-1]], [replaced[-1]]
    paired = [replaced[j] for j in stretch_alignment(len(concept), len(replaced))]
    if token == "all":
        return concept, paired
    tail = list(range(concept[-1] + 1, source.rows))
    target_tail = list(range(replaced[-1] + 1, target.rows))
    if not tail or not target_tail:
        return concept, paired
    return concept + tail, paired + [target_tail[j] for j in stretch_alignment(len(tail), len(target_tail))]


@dataclass
class TextRows:
    """Selected token rows of a batch of encoded prompts, as a layer's key/value projections read them."""

    states: torch.Tensor  # [prompts, tokens, dim] attention states (model dtype)
    prompt_index: torch.Tensor  # [rows] long
    position_index: torch.Tensor  # [rows] long

    def __len__(self) -> int:
        return int(self.prompt_index.numel())

    def at(self, layer: CrossAttentionLayer) -> torch.Tensor:  # [rows, dim] float64
        """The rows as ``layer``'s key/value projections receive them.

        Layers with ``norm_cross`` (DeepFloyd IF's group norm) normalise the full padded prompt first, then rows are
        picked, exactly as the attention processor does.
        """
        states = self.states
        with torch.no_grad():
            if layer.module.norm_cross is not None:
                states = layer.module.norm_encoder_hidden_states(states)
            return states[self.prompt_index, self.position_index].to(torch.float64)


def encode_rows(adapter: Adapter, prompts: list[str], positions: list[list[int]]) -> TextRows:
    """Encode ``prompts`` and select ``positions[i]`` of prompt ``i``."""
    with torch.no_grad():
        states = adapter.attention_states(adapter.encode(list(prompts)).conditional)  # [prompts, tokens, dim]
    tokens = states.shape[1]
    for prompt, chosen in zip(prompts, positions):
        if chosen and max(chosen) >= tokens:
            raise LocoeditError(f"prompt {prompt!r}: token position {max(chosen)} is beyond the {tokens} encoded")
    prompt_index = torch.tensor([i for i, chosen in enumerate(positions) for _ in chosen], dtype=torch.long)
    position_index = torch.tensor([p for chosen in positions for p in chosen], dtype=torch.long)
    return TextRows(states, prompt_index.to(states.device), position_index.to(states.device))


def all_real_positions(adapter: Adapter, prompts) -> list[list[int]]:
    """Every non-padding position of each prompt (start and end tokens included)."""
    return [list(range(adapter.tokenize(p).length)) for p in prompts]


@dataclass
class EditRows:
    concept: TextRows  # X_o
    target: TextRows  # X_t, aligned row by row with ``concept``
    preserve: TextRows | None  # X_p, mapped to themselves
    pairs: list[PromptPair]

    def matrices(self, layer: CrossAttentionLayer, preserve_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked (sources, targets) [rows, in] for ``layer``, preservation rows weighted by sqrt(scale)."""
        sources, targets = self.concept.at(layer), self.target.at(layer)
        if self.preserve is not None:
            kept = self.preserve.at(layer) * math.sqrt(preserve_scale)
            sources, targets = torch.cat([sources, kept]), torch.cat([targets, kept])
        return sources, targets


def build_rows(adapter: Adapter, request: EditRequest) -> EditRows:
    pairs = prompt_pairs(request.concepts, request.all_targets, request.prompt_set)
    aligned = [aligned_positions(adapter, pair, request.token) for pair in pairs]
    concept = encode_rows(adapter, [p.prompt for p in pairs], [a for a, _ in aligned])
    target = encode_rows(adapter, [p.target_prompt for p in pairs], [b for _, b in aligned])
    preserve = None
    if request.preserve:
        preserve = encode_rows(adapter, list(request.preserve), all_real_positions(adapter, request.preserve))
    return EditRows(concept, target, preserve, pairs)


# ---------------------------------------------------------------------------------------------------- layers


def resolve_layers(adapter: Adapter, spec, request: EditRequest | None = None) -> list[CrossAttentionLayer]:
    """The layers named by ``spec``: indices, a LocoGen run folder, or "auto" (runs LocoGen on the request)."""
    table = adapter.layers
    if spec == "auto":
        if request is None:
            raise LocoeditError("layers='auto' needs the edit request to run LocoGen on")
        indices = _localize_layers(adapter, request)
    elif isinstance(spec, (str, Path)):
        indices = _layers_from_run(Path(spec), table)
    else:
        indices = list(spec)
    bad = [i for i in indices if not 0 <= i < len(table)]
    if bad:
        raise LocoeditError(
            f"layer indices {bad} are out of range: this model has {len(table)} cross-attention layers "
            f"(0..{len(table) - 1})"
        )
    return [table[i] for i in sorted(indices)]


def _layers_from_run(folder: Path, table: list[CrossAttentionLayer]) -> list[int]:
    file = folder / "localization.json"
    if not file.is_file():
        raise LocoeditError(f"{folder} holds no localization.json; give the folder of a finished `locoedit localize` run")
    try:
        chosen = json.loads(file.read_text())["chosen"]
        indices, names = [int(i) for i in chosen["layers"]], list(chosen.get("names", []))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise LocoeditError(f"{file} is damaged: no chosen layers ({error}); rerun `locoedit localize`") from error
    for index, name in zip(indices, names):
        if index >= len(table) or table[index].name != name:
            raise LocoeditError(
                f"{file} chose layer {index} ({name}) but this model's layer {index} is "
                f"{table[index].name if index < len(table) else 'missing'}: the run was for another model"
            )
    return indices


def _localize_layers(adapter: Adapter, request: EditRequest) -> list[int]:
    from locoedit.localize import LocalizationRequest, localize

    pairs = prompt_pairs(request.concepts, request.all_targets, request.prompt_set)
    localization = LocalizationRequest(
        model=request.model,
        prompts=tuple(p.prompt for p in pairs),
        targets=tuple(p.target_prompt for p in pairs),
        concept=", ".join(request.concepts),
        window=request.auto_window,
        seeds=request.auto_seeds,
        steps=request.auto_steps,
        dtype=request.dtype,
    )
    result = localize(localization, adapter=adapter, progress=False)
    logger.info("LocoGen chose layers %s", result.chosen.layers)
    return list(result.chosen.layers)


# ---------------------------------------------------------------------------------------------------- compute


def compute_edit(adapter: Adapter, request: EditRequest, layers: list[CrossAttentionLayer] | None = None) -> EditDelta:
    """The LocoEdit of ``request`` on ``adapter``'s model, as a delta. The model is not modified."""
    if layers is None:
        layers = resolve_layers(adapter, request.layers, request)
    rows = build_rows(adapter, request)
    tensors, originals, report = {}, {}, []
    workspace = Workspace()
    for layer in layers:
        sources, targets = rows.matrices(layer, request.preserve_scale)  # [rows, in] float64
        for projection, lam in zip(layer.edit_projections, (request.lambda_key, request.lambda_value)):
            name = f"{layer.name}.{projection}.weight"
            weight = getattr(layer.module, projection).weight  # [out, in]
            new, objective = edit_matrix(weight, sources, targets, lam, name, workspace)
            tensors[name] = new.cpu()
            originals[name] = describe_original(weight)
            report.append({"parameter": name, "objective": objective})
    settings = request.to_json()
    settings.update(
        {
            "prompt_pairs": [[p.prompt, p.target_prompt] for p in rows.pairs],
            "concept_rows": len(rows.concept),
            "preserve_rows": 0 if rows.preserve is None else len(rows.preserve),
            "objectives": report,
        }
    )
    return EditDelta.computed_on(adapter.denoiser, request.model, "locoedit", layers, tensors, originals, settings)


def edit_from_request(request: EditRequest, adapter: Adapter | None = None) -> EditDelta:
    """Load the model (unless an adapter is given) and compute the edit; the CLI's ``edit`` command."""
    if adapter is None:
        adapter = load_adapter(request.model, DTYPES[request.dtype], request.device)
    return compute_edit(adapter, request)


def edit_to_file(request: EditRequest, out: str | Path, adapter: Adapter | None = None) -> EditDelta:
    """Compute the edit and write it to ``out`` (atomically); on any error nothing is written."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise LocoeditError(f"--out {out} must end in .safetensors (a delta file)")
    delta = edit_from_request(request, adapter)
    delta.save(out)
    return delta
