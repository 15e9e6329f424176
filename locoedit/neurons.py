"""Neuron-level LocoEdit: silence the key/value output neurons of the localized layers that respond to a concept.

For each edited projection (``to_k``/``to_v``, IF: ``add_k_proj``/``add_v_proj``) with output ``a = x W^T + b``:

1. Activations on concept rows (the concept's tokens in its prompts, chosen by ``token`` as in ``locoedit.edit``)
   and on neutral rows (every real token but the start token of the neutral prompts).
2. Each output neuron j gets the z-score ``z_j = (mean_concept_j - mean_neutral_j) / std_neutral_j``; the ``top_k``
   neurons by ``|z_j|`` are chosen, per projection.
3. Each chosen neuron is replaced by its neutral mean ``m_j``: with a bias (IF, PixArt) exactly, ``W_j = 0`` and
   ``b_j = m_j``. Without a bias (SD, SD-XL) no linear row is constant, so ``W_j = m_j u^T`` where ``u`` is the ridge
   fit of ``X u = 1`` over all concept and neutral rows: the neuron then outputs about ``m_j`` on text like the
   prompts (the fit's residual is recorded in the delta's settings).

The result is an :class:`~locoedit.delta.EditDelta` (method ``"neurons"``), like a closed-form edit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

from locoedit.adapters import Adapter, load_adapter
from locoedit.delta import EditDelta, describe_original
from locoedit.edit import (
    DTYPES,
    KINDS,
    PLACEHOLDER,
    TOKEN_CHOICES,
    TextRows,
    _check_layer_spec,
    _check_positive,
    _find,
    _span_positions,
    _tuple,
    encode_rows,
    prompt_templates,
    resolve_layers,
    to_model_dtype,
)
from locoedit.errors import LocoeditError
from locoedit.layers import CrossAttentionLayer


@dataclass(frozen=True)
class NeuronRequest:
    """A neuron-level edit. Validates on construction; serialises to JSON."""

    model: str
    concepts: tuple[str, ...]
    neutral: tuple[str, ...] = ()  # neutral prompts; empty = the concept prompts with ``targets`` in its place
    targets: tuple[str, ...] = ()  # used only to make neutral prompts when ``neutral`` is empty
    kind: str = "object"
    prompts: tuple[str, ...] = ()  # templates with "{c}" or prompts containing a concept; empty = the kind's
    layers: tuple[int, ...] | str = "auto"
    top_k: int = 8  # neurons replaced per projection
    token: str = "last-subject"
    fit_lambda: float = 1e-3  # ridge of the constant fit used for projections without a bias
    dtype: str = "float32"
    device: str | None = None
    auto_window: int = 2
    auto_steps: int | None = None
    auto_seeds: tuple[int, ...] = (0, 1, 2, 3)

    def __post_init__(self):
        for name in ("concepts", "neutral", "targets", "prompts", "auto_seeds"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if not self.concepts or any(not c.strip() for c in self.concepts):
            raise LocoeditError("concepts is empty or holds an empty string; give at least one --concept with text")
        if any(not p.strip() for p in self.neutral + self.prompts + self.targets):
            raise LocoeditError("a prompt, neutral prompt or target is empty; every one needs text")
        if not self.neutral and not self.targets:
            raise LocoeditError("no neutral prompts: give --neutral prompts, or a --target to put in the concept's place")
        if self.targets and len(self.targets) not in (1, len(self.concepts)):
            raise LocoeditError(f"got {len(self.targets)} targets for {len(self.concepts)} concepts; give one or one each")
        if self.kind not in KINDS:
            raise LocoeditError(f"kind {self.kind!r} is unknown; use one of {', '.join(KINDS)} (--kind)")
        if self.token not in TOKEN_CHOICES:
            raise LocoeditError(f"token {self.token!r} is unknown; use one of {', '.join(TOKEN_CHOICES)} (--token)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise LocoeditError(f"top_k {self.top_k!r} must be an integer >= 1 (--top-k)")
        _check_positive("fit_lambda", self.fit_lambda, "--fit-lambda")
        if self.dtype not in DTYPES:
            raise LocoeditError(f"dtype {self.dtype!r} is unknown; use one of {', '.join(DTYPES)}")
        _check_layer_spec(self.layers)
        if self.layers == "auto" and not self.targets:
            raise LocoeditError("layers='auto' runs LocoGen, which needs a --target for the concept; or give --layers")

    def edit_request(self):
        """The equivalent closed-form request, for resolving ``layers`` (LocoGen needs prompts and targets)."""
        from locoedit.edit import EditRequest

        return EditRequest(model=self.model, concepts=self.concepts, targets=self.targets or ("unused",), kind=self.kind,
                           prompts=self.prompts, layers=self.layers, token=self.token, dtype=self.dtype,
                           auto_window=self.auto_window, auto_steps=self.auto_steps, auto_seeds=self.auto_seeds)

    def to_json(self) -> dict:
        data = asdict(self)
        for name in ("concepts", "neutral", "targets", "prompts", "auto_seeds"):
            data[name] = list(data[name])
        if isinstance(self.layers, tuple):
            data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_json(cls, data: dict) -> NeuronRequest:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def neuron_zscores(
    concept: torch.Tensor,  # [n_concept, out] activations on concept rows
    neutral: torch.Tensor,  # [n_neutral, out] activations on neutral rows
) -> torch.Tensor:  # [out]
    """z_j = (mean_concept_j - mean_neutral_j) / std_neutral_j (std floored at 1e-6 of its mean over neurons)."""
    std = neutral.std(dim=0, unbiased=neutral.shape[0] > 1)
    floor = 1e-6 * std.mean().clamp_min(1e-12)
    return (concept.mean(dim=0) - neutral.mean(dim=0)) / std.clamp_min(floor)


def constant_fit(rows: torch.Tensor, lam: float) -> torch.Tensor:  # [in]
    """u = argmin ||X u - 1||^2 + lam ||u||^2 = X^T (X X^T + lam I)^{-1} 1 (an n x n solve), float64."""
    x = rows.to(torch.float64)  # [n, in]
    ones = torch.ones(x.shape[0], 1, dtype=torch.float64, device=x.device)
    gram = x @ x.T + lam * torch.eye(x.shape[0], dtype=torch.float64, device=x.device)
    return (x.T @ torch.linalg.solve(gram, ones)).squeeze(1)


def _concept_prompts(request: NeuronRequest) -> list[tuple[str, str, int]]:
    """(prompt, concept, concept start) for every concept and prompt."""
    prompts = request.prompts or prompt_templates(request.kind)
    found = []
    for concept in request.concepts:
        concept = concept.strip()
        for prompt in prompts:
            if PLACEHOLDER in prompt:
                found.append((prompt.replace(PLACEHOLDER, concept), concept, prompt.index(PLACEHOLDER)))
            elif (start := _find(prompt, concept)) is not None:
                found.append((prompt, concept, start))
        if not any(c == concept for _, c, _ in found):
            raise LocoeditError(f"no prompt mentions concept {concept!r}; add a prompt with it or with {{c}}")
    return found


def _neutral_prompts(request: NeuronRequest) -> list[str]:
    if request.neutral:
        return list(request.neutral)
    from locoedit.edit import prompt_pairs

    targets = request.targets * len(request.concepts) if len(request.targets) == 1 else request.targets
    pairs = prompt_pairs(request.concepts, targets, request.prompts or prompt_templates(request.kind))
    return [p.target_prompt for p in pairs]


def _concept_positions(adapter: Adapter, prompt: str, concept: str, start: int, token: str) -> list[int]:
    tokens = adapter.tokenize(prompt)
    if token == "eos":
        return [tokens.eos]
    span = _span_positions(tokens, concept, start, prompt)
    if token == "last-subject":
        return [span[-1]]
    if token == "all":
        return span
    return span + list(range(span[-1] + 1, tokens.eos + 1))


def _neutral_positions(adapter: Adapter, prompt: str) -> list[int]:
    tokens = adapter.tokenize(prompt)
    return [i for i in range(tokens.length) if not tokens.special[i] or i == tokens.eos]


def _activations(projection: torch.nn.Linear, rows: torch.Tensor) -> torch.Tensor:  # [rows, out] float64
    out = rows @ projection.weight.detach().double().T
    return out if projection.bias is None else out + projection.bias.detach().double()


def compute_neuron_edit(
    adapter: Adapter, request: NeuronRequest, layers: list[CrossAttentionLayer] | None = None
) -> EditDelta:
    """The neuron-level edit of ``request`` on ``adapter``'s model, as a delta. The model is not modified."""
    if layers is None:
        layers = resolve_layers(adapter, request.layers, request.edit_request())
    concept_prompts = _concept_prompts(request)
    neutral_prompts = _neutral_prompts(request)
    concept_rows: TextRows = encode_rows(
        adapter, [p for p, _, _ in concept_prompts],
        [_concept_positions(adapter, p, c, s, request.token) for p, c, s in concept_prompts],
    )
    neutral_rows = encode_rows(adapter, neutral_prompts, [_neutral_positions(adapter, p) for p in neutral_prompts])
    tensors, originals, chosen = {}, {}, []
    for layer in layers:
        x_concept, x_neutral = concept_rows.at(layer), neutral_rows.at(layer)  # [n, in]
        direction, residual = None, 0.0
        for projection_name in layer.edit_projections:
            projection = getattr(layer.module, projection_name)
            top_k = min(request.top_k, projection.out_features)
            concept_acts, neutral_acts = _activations(projection, x_concept), _activations(projection, x_neutral)
            scores = neuron_zscores(concept_acts, neutral_acts)  # [out]
            neurons = torch.argsort(scores.abs(), descending=True)[:top_k]
            means = neutral_acts.mean(dim=0)[neurons]  # [k]
            weight = projection.weight.detach().double().clone()  # [out, in]
            prefix = f"{layer.name}.{projection_name}"
            if projection.bias is not None:
                weight[neurons] = 0.0
                bias = projection.bias.detach().double().clone()
                bias[neurons] = means
                tensors[f"{prefix}.bias"] = to_model_dtype(bias, projection.bias, f"{prefix}.bias").cpu()
                originals[f"{prefix}.bias"] = describe_original(projection.bias)
            else:
                if direction is None:
                    fit_rows = torch.cat([x_concept, x_neutral])
                    direction = constant_fit(fit_rows, request.fit_lambda)  # [in]
                    residual = float((fit_rows @ direction - 1).abs().mean())
                weight[neurons] = means[:, None] * direction[None, :]
            tensors[f"{prefix}.weight"] = to_model_dtype(weight, projection.weight, f"{prefix}.weight").cpu()
            originals[f"{prefix}.weight"] = describe_original(projection.weight)
            chosen.append({
                "parameter": prefix,
                "neurons": neurons.tolist(),
                "zscores": [round(float(scores[j]), 4) for j in neurons],
                "neutral_means": [float(m) for m in means],
                "constant_fit_residual": None if projection.bias is not None else residual,
            })
    settings = request.to_json()
    settings.update({
        "concept_prompts": [p for p, _, _ in concept_prompts],
        "neutral_prompts": neutral_prompts,
        "concept_rows": len(concept_rows),
        "neutral_rows": len(neutral_rows),
        "chosen_neurons": chosen,
    })
    if not all(math.isfinite(m) for item in chosen for m in item["neutral_means"]):
        raise LocoeditError("neutral activations are not finite; check the model's weights and dtype")
    return EditDelta.computed_on(adapter.denoiser, request.model, "neurons", layers, tensors, originals, settings)


def neurons_from_request(request: NeuronRequest, adapter: Adapter | None = None) -> EditDelta:
    """Load the model (unless an adapter is given) and compute the neuron edit; the CLI's ``neurons`` command."""
    if adapter is None:
        adapter = load_adapter(request.model, DTYPES[request.dtype], request.device)
    return compute_neuron_edit(adapter, request)
