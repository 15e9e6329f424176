"""Edits as data: an :class:`EditDelta` holds the changes of a few denoiser parameters and what they replace.

Computing an edit (``locoedit.edit``, ``locoedit.edit.neurons``) never touches the model; it returns a delta.
A matrix whose update has rank r < min(out, in) (a LocoEdit of n < min(out, in) text rows, a neuron edit of k rows)
is held as its float64 factors, ``W' = W + U V`` (:class:`~locoedit.core.lowrank.LowRank`); anything else (biases,
full-rank updates, version-1 files) as its new value in the parameter's dtype.
``delta.apply(pipe)`` checks that the model is the one the delta was computed for (architecture fingerprint,
sha256, shape and dtype of every original parameter), writes the new values in place under ``no_grad`` (``W + U V``
in float64, rounded once) and returns an :class:`AppliedDelta` whose ``revert()`` restores the originals bit for
bit (also a context manager). A delta is also an intervention: ``adapter.generate(..., interventions=[delta])``
generates with it and reverts after.

A delta file is safetensors (read with ``safe_open``, never unpickled). Format ``locoedit-delta/2``: a dense
parameter is one tensor named by its path in the denoiser
(``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight``), a factored one two float64 tensors
``PATH:up`` [out, r] and ``PATH:down`` [r, in]; string metadata: format, locoedit version, base model, denoiser
class, fingerprint, method, layers, settings (lambdas, token choice, prompts, ...), the sha256 of each original
parameter and of each stored tensor. Format ``locoedit-delta/1`` (dense new values only, no denoiser class) still
loads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from locoedit import __version__
from locoedit.core.errors import LocoeditError
from locoedit.core.io import write_safetensors
from locoedit.core.lowrank import LowRank, add_low_rank, check_low_rank_fits, to_model_dtype
from locoedit.core.runfolder import check_writable
from locoedit.models import Adapter, Intervention, adapter_for

FORMAT = "locoedit-delta/2"
FORMAT_V1 = "locoedit-delta/1"  # dense new values only; read, never written
_METADATA_KEYS: dict[str, tuple[str, ...]] = {
    FORMAT_V1: (
        "format",
        "locoedit_version",
        "base_model",
        "fingerprint",
        "method",
        "layers",
        "settings",
        "originals",
        "edited_sha256",
    ),
}
_METADATA_KEYS[FORMAT] = _METADATA_KEYS[FORMAT_V1] + ("denoiser",)
_UP, _DOWN = ":up", ":down"  # suffixes of a factored parameter's two tensors in a file


MAX_RELATIVE_CHANGE = 100.0  # an update this many times the size of its matrix is damage, not an edit


def check_delta_path(path: str | Path) -> Path:
    """A delta file's path must end in ``.safetensors`` and not name a folder; checked before any work is done."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise LocoeditError(f"--out {path} must end in .safetensors (a delta file)")
    if path.is_dir():
        raise LocoeditError(
            f"--out {path} is a folder; give the path of the delta file to write, e.g. {path}/edit.safetensors"
        )
    check_writable(path.parent)
    return path


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of the tensor's raw bytes in its own dtype (row-major), as numpy's ``tobytes()`` would give them."""
    flat = tensor.detach().contiguous().cpu().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def architecture_fingerprint(denoiser: torch.nn.Module) -> str:
    """sha256 over the denoiser's class and its sorted (parameter name, shape) list; independent of dtype and values."""
    lines = [type(denoiser).__name__]
    lines += sorted(f"{name}:{tuple(p.shape)}" for name, p in denoiser.named_parameters())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _denoiser_of(model) -> torch.nn.Module:
    """The denoiser of an adapter, a pipeline, or a denoiser module itself."""
    if isinstance(model, Adapter):
        return model.denoiser
    if isinstance(model, torch.nn.Module):
        return model
    return adapter_for(model).denoiser


def describe_original(parameter: torch.Tensor) -> dict:
    return {"sha256": tensor_sha256(parameter), "shape": list(parameter.shape), "dtype": str(parameter.dtype)}


class AppliedDelta:
    """A delta written into a model. ``revert()`` puts the original values back, bit for bit."""

    def __init__(self, parameters: dict[str, torch.nn.Parameter], originals: dict[str, torch.Tensor]):
        self._parameters = parameters
        self._originals = originals  # clones of the values before the edit
        self.reverted = False

    def revert(self) -> None:
        if self.reverted:
            return
        with torch.no_grad():
            for name, parameter in self._parameters.items():
                parameter.copy_(self._originals[name])
        self.reverted = True

    def __enter__(self) -> AppliedDelta:
        return self

    def __exit__(self, *exc) -> None:
        self.revert()


@dataclass
class EditDelta(Intervention):
    """Changes of a few denoiser parameters, and everything needed to check where they may be applied."""

    tensors: dict[str, torch.Tensor]  # parameter path -> new value in the parameter's dtype (biases, full rank, v1)
    originals: dict[str, dict]  # parameter path -> {"sha256", "shape", "dtype"} of the value it replaces
    fingerprint: str  # architecture_fingerprint of the denoiser it was computed on
    base_model: str  # hub id or folder the model was loaded from (informational; not checked)
    method: str  # "locoedit" or "neurons"
    layers: list[dict]  # [{"index", "name"}] of the edited cross-attention layers
    settings: dict = field(default_factory=dict)  # the method's parameters and prompts (JSON)
    version: str = __version__
    factors: dict[str, LowRank] = field(default_factory=dict)  # parameter path -> W' = W + U V (float64)
    denoiser: str = ""  # the denoiser's class name ("" when read from a version-1 file)
    pipeline: str = ""  # the pipeline's class name ("" in files of locoedit 0.1)

    @classmethod
    def computed_on(
        cls,
        model,
        base_model: str,
        method: str,
        layers,
        tensors: dict,
        originals: dict,
        settings: dict,
        factors: dict | None = None,
    ) -> EditDelta:
        """A delta for ``model`` (adapter, pipeline or denoiser): fingerprints its denoiser and names the edited
        ``layers`` by index and module path."""
        denoiser = _denoiser_of(model)
        return cls(
            tensors=tensors,
            originals=originals,
            fingerprint=architecture_fingerprint(denoiser),
            base_model=base_model,
            method=method,
            layers=[{"index": layer.index, "name": layer.name} for layer in layers],
            settings=settings,
            factors=factors or {},
            denoiser=type(denoiser).__name__,
            pipeline=type(model.pipe).__name__ if isinstance(model, Adapter) else "",
        )

    @property
    def parameters(self) -> list[str]:
        """Paths of every parameter the delta changes, dense or factored."""
        return sorted([*self.tensors, *self.factors])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters it was computed for."""
        return getattr(torch, next(iter(self.originals.values()))["dtype"].removeprefix("torch."))

    def check(self, model) -> dict[str, torch.nn.Parameter]:
        """The parameters this delta replaces in ``model``; raises LocoeditError if it was computed for another model."""
        denoiser = _denoiser_of(model)
        if architecture_fingerprint(denoiser) != self.fingerprint:
            raise LocoeditError(
                f"this delta was computed for another architecture (fingerprint {self.fingerprint[:12]}, base model "
                f"{self.base_model!r}); the model given is a {type(denoiser).__name__} with fingerprint "
                f"{architecture_fingerprint(denoiser)[:12]}: apply it to the model it was computed on"
            )
        parameters = dict(denoiser.named_parameters())
        found = {}
        for name in self.parameters:
            if name not in parameters:
                raise LocoeditError(f"the model has no parameter {name}; this delta was computed for another model")
            parameter, recorded = parameters[name], self.originals[name]
            shape = list(self.tensors[name].shape if name in self.tensors else self.factors[name].shape)
            if shape != list(parameter.shape) or list(recorded["shape"]) != list(parameter.shape):
                raise LocoeditError(
                    f"{name}: the delta holds a {shape} matrix but the model's is {list(parameter.shape)}; "
                    "the delta is damaged or for another model"
                )
            if str(parameter.dtype) != recorded["dtype"] or (
                name in self.tensors and self.tensors[name].dtype != parameter.dtype
            ):
                raise LocoeditError(
                    f"{name}: the delta was computed for {recorded['dtype']} weights but the model's are "
                    f"{parameter.dtype}; load the model with that dtype"
                )
            if tensor_sha256(parameter) != recorded["sha256"]:
                raise LocoeditError(
                    f"{name}: the model's original matrix differs from the one the delta was computed on (sha256 "
                    f"{recorded['sha256'][:12]}); it is another model, or this or another edit is already applied"
                )
            found[name] = parameter
        return found

    def edited_values(self, model) -> dict[str, torch.Tensor]:
        """What :meth:`apply` would write into ``model``, by parameter path; the model is left untouched."""
        parameters = self.check(model)
        return {
            name: self.tensors[name] if name in self.tensors else add_low_rank(parameter, self.factors[name], name)
            for name, parameter in parameters.items()
        }

    def check_plausible(self, parameters: dict[str, torch.nn.Parameter]) -> None:
        """Refuse values that are not finite, and updates far larger than the matrices they edit: a file forged with
        consistent checksums, or an edit that diverged, would otherwise draw black images."""
        for name, parameter in parameters.items():
            size = parameter.detach().double().norm().item()
            if name in self.tensors:
                new = self.tensors[name]
                if not torch.isfinite(new).all():
                    raise LocoeditError(f"{name}: the delta holds inf or nan; the file is damaged (recompute the edit)")
                change = (new.double() - parameter.detach().double().cpu()).norm().item()
            else:
                update = self.factors[name]
                change = ((update.up.T @ update.up) * (update.down @ update.down.T)).sum().clamp_min(0).sqrt().item()
            if change > MAX_RELATIVE_CHANGE * max(size, 1e-12):
                raise LocoeditError(
                    f"{name}: the delta changes the matrix by {change / max(size, 1e-12):.3g} times its own size (at "
                    f"most {MAX_RELATIVE_CHANGE:g} is plausible); the file is damaged or the edit diverged: recompute "
                    "it with larger lambdas"
                )

    def apply(self, model, strength: float = 1.0) -> AppliedDelta:
        """Write the delta into ``model`` (adapter, pipeline or denoiser); returns a handle that reverts it.

        ``strength`` s scales the update, ``W + s (W' - W)``: 0 leaves the model as it is, 1 writes the edit bit for
        bit. A factored update becomes ``W + (s U) V``; a dense one is interpolated in float64 and rounded once."""
        check_strength(strength)
        parameters = self.check(model)
        self.check_plausible(parameters)
        factors = {name: LowRank(update.up * strength, update.down) for name, update in self.factors.items()}
        for name, update in factors.items():  # refuse an overflow before anything is written
            check_low_rank_fits(parameters[name], update, name)
        originals = {name: parameter.detach().clone() for name, parameter in parameters.items()}
        with torch.no_grad():
            for name, parameter in parameters.items():
                if name in self.tensors:
                    new = self.tensors[name].to(parameter.device)
                    if strength != 1.0:
                        old = parameter.detach().double()
                        new = to_model_dtype(old + strength * (new.double() - old), parameter, name)
                    # copy_ keeps the parameter contiguous (safetensors refuses a transposed nn.Parameter).
                    parameter.copy_(new)
                else:  # in place: each block of rows is read before it is written
                    add_low_rank(parameter, factors[name], name, out=parameter.detach())
        return AppliedDelta(parameters, originals)

    @contextmanager
    def installed(self, adapter: Adapter) -> Iterator[None]:
        with self.apply(adapter):
            yield

    def at_strength(self, strength: float) -> ScaledDelta:
        """This delta as an intervention that applies it at ``strength`` (see :meth:`apply`) for one generation."""
        check_strength(strength)
        return ScaledDelta(self, strength)

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of a delta file: dense parameters by path, factored ones as ``PATH:up`` and ``PATH:down``."""
        stored = dict(self.tensors)
        for name, update in self.factors.items():
            stored[name + _UP], stored[name + _DOWN] = update.up, update.down
        return stored

    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "locoedit_version": self.version,
            "base_model": self.base_model,
            "denoiser": self.denoiser,
            "pipeline": self.pipeline,
            "fingerprint": self.fingerprint,
            "method": self.method,
            "layers": json.dumps(self.layers),
            "settings": json.dumps(self.settings),
            "originals": json.dumps(self.originals),
            "edited_sha256": json.dumps({name: tensor_sha256(t) for name, t in self.stored_tensors().items()}),
        }

    def digest(self) -> str:
        """sha256 of the metadata, which holds the checksum of every stored value: the delta's identity."""
        return hashlib.sha256(json.dumps(self.metadata(), sort_keys=True).encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the delta as one safetensors file (format ``locoedit-delta/2``), atomically."""
        return write_safetensors(path, self.stored_tensors(), self.metadata())

    @classmethod
    def load(cls, path: str | Path) -> EditDelta:
        """Read a delta file written by :meth:`save` (or by locoedit 0.1: version 1); refuses anything else (never
        unpickles)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise LocoeditError(f"delta file {path} does not exist; give the .safetensors file written by an edit")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (a safe_open handle is no dict)
        except Exception as error:  # safetensors raises its own error type, and OSError / ValueError
            raise LocoeditError(
                f"{path} is not a readable safetensors file ({type(error).__name__}: {error}); a delta must be the "
                "file written by locoedit edit / neurons (locoedit never unpickles)"
            ) from error
        if metadata.get("format") not in _METADATA_KEYS:
            raise LocoeditError(
                f"{path} is a safetensors file but not a locoedit delta (format {metadata.get('format')!r}, "
                f"expected {FORMAT!r} or {FORMAT_V1!r})"
            )
        missing = [key for key in _METADATA_KEYS[metadata["format"]] if key not in metadata]
        if missing:
            raise LocoeditError(f"{path} is a damaged locoedit delta: metadata lacks {', '.join(missing)}")
        try:
            layers, settings, originals, edited = (
                json.loads(metadata[key]) for key in ("layers", "settings", "originals", "edited_sha256")
            )
        except json.JSONDecodeError as error:
            raise LocoeditError(
                f"{path} is a damaged locoedit delta: its metadata is not valid JSON ({error})"
            ) from error
        if set(edited) != set(stored):
            raise LocoeditError(
                f"{path} is a damaged locoedit delta: its tensors and its metadata name different tensors"
            )
        for name, tensor in stored.items():
            if tensor_sha256(tensor) != edited[name]:
                raise LocoeditError(f"{path} is corrupt: tensor {name} does not match its recorded sha256")
        tensors, factors = _split_stored(stored, path)
        if set(originals) != {*tensors, *factors}:
            raise LocoeditError(
                f"{path} is a damaged locoedit delta: its tensors and its metadata name different parameters"
            )
        return cls(
            tensors,
            originals,
            metadata["fingerprint"],
            metadata["base_model"],
            metadata["method"],
            layers,
            settings,
            metadata["locoedit_version"],
            factors,
            metadata.get("denoiser", ""),
            metadata.get("pipeline", ""),
        )


def check_strength(strength: float) -> None:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise LocoeditError(f"strength {strength!r} must be a number from 0 (the original model) to 1 (the edit)")


@dataclass(frozen=True)
class ScaledDelta(Intervention):
    """A delta applied at a strength for the span of a generation, reverted after (even when generation raises)."""

    delta: EditDelta
    strength: float

    @contextmanager
    def installed(self, adapter: Adapter) -> Iterator[None]:
        with self.delta.apply(adapter, self.strength):
            yield


def _split_stored(stored: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], dict[str, LowRank]]:
    """Dense parameters and factored ones (``PATH:up`` with ``PATH:down``) of a delta file's tensors."""
    ups = {name.removesuffix(_UP) for name in stored if name.endswith(_UP)}
    downs = {name.removesuffix(_DOWN) for name in stored if name.endswith(_DOWN)}
    if ups != downs:
        raise LocoeditError(f"{path} is a damaged locoedit delta: factors {sorted(ups ^ downs)} lack their other half")
    tensors = {name: tensor for name, tensor in stored.items() if not name.endswith((_UP, _DOWN))}
    try:
        factors = {name: LowRank(stored[name + _UP], stored[name + _DOWN]) for name in sorted(ups)}
    except LocoeditError as error:
        raise LocoeditError(f"{path}: {error}") from None
    return tensors, factors
