"""Hidden-state interventions: record a module's outputs during one generation, patch them into another.

A *site* is a module of the pipeline named by its real path, component first: ``unet.mid_block.attentions.0``,
``transformer.transformer_blocks.3``, ``text_encoder.text_model.encoder.layers.2``; ``unet`` is the denoiser itself.
:class:`ActivationRecorder` keeps every output of its sites, call by call (a denoiser site runs once per denoising
step, a text-encoder site once per encoded batch); :class:`ActivationPatch` replaces a site's output at call ``k``
with the ``k``-th recorded one, in all batch rows or the selected ones, at all token positions or the selected ones.
Causal tracing restores a clean run's states into a corrupted run this way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from locoedit.core.errors import LocoeditError
from locoedit.models import Adapter, Intervention


def site_module(adapter: Adapter, name: str) -> torch.nn.Module:
    """The module at pipeline path ``name`` (component, then the path inside it)."""
    component, _, path = name.partition(".")
    module = getattr(adapter.pipe, component, None)
    try:
        if not isinstance(module, torch.nn.Module):
            raise AttributeError(component)
        return module.get_submodule(path)
    except AttributeError:
        raise LocoeditError(
            f"the pipeline has no module {name!r}; name a site by its path in the pipeline, component first, e.g. "
            f"{adapter.denoiser_name}.{adapter.layers[0].name}"
        ) from None


def _tensor_of(output) -> torch.Tensor:  # a module returns a tensor, or a tuple / output object whose first item is one
    return output if isinstance(output, torch.Tensor) else output[0]


def _with_tensor(output, tensor: torch.Tensor):
    if isinstance(output, torch.Tensor):
        return tensor
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    output[0] = tensor  # diffusers' BaseOutput: item assignment updates the field
    return output


@contextmanager
def _forward_hooks(adapter: Adapter, hooks: dict[str, Callable[..., object]]) -> Iterator[None]:
    handles = [site_module(adapter, name).register_forward_hook(hook) for name, hook in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class ActivationRecorder(Intervention):
    """Records the output tensor of each site at every call: ``outputs[site][k]`` [batch, ...] on the CPU."""

    def __init__(self, sites: Sequence[str]):
        self.sites = tuple(sites)
        self.outputs: dict[str, list[torch.Tensor]] = {site: [] for site in self.sites}

    def installed(self, adapter: Adapter):
        def record(site):
            return lambda module, args, output: self.outputs[site].append(_tensor_of(output).detach().cpu().clone())

        return _forward_hooks(adapter, {site: record(site) for site in self.sites})

    def verify(self) -> None:
        silent = [site for site, outputs in self.outputs.items() if not outputs]
        if silent:
            raise RuntimeError(f"recorded sites {silent} never ran during generation")


class ActivationPatch(Intervention):
    """Replaces ``site``'s output at its ``k``-th call by ``recorded[k]``, in the batch ``rows`` selected ([batch]
    bool over the module's own batch, or over one guidance half for each half; None = every row) and, for outputs
    with a token axis ([batch, tokens, ...]), at the token ``positions`` selected (None = every position). A
    recording holds either the whole batch or just the selected rows, in order."""

    def __init__(
        self,
        site: str,
        recorded: Sequence[torch.Tensor],
        rows: torch.Tensor | None = None,
        positions: Sequence[int] | None = None,
    ):
        self.site = site
        self.recorded = list(recorded)
        self.rows = rows
        self.positions = None if positions is None else list(positions)
        self.calls = 0

    def _rows_for(self, batch: int) -> torch.Tensor:  # [batch] bool
        """The selected rows over a call's batch: a selection of one guidance half applies to each half (FLUX and
        guidance 1 run one half, classifier-free guidance two)."""
        assert self.rows is not None
        if batch != self.rows.numel() and batch % self.rows.numel() == 0:
            return self.rows.repeat(batch // self.rows.numel())
        return self.rows

    def _patch(self, module, args, output):
        if self.calls >= len(self.recorded):
            raise RuntimeError(
                f"site {self.site!r} ran {self.calls + 1} times but only {len(self.recorded)} outputs were recorded; "
                "record and patch with the same steps and batch layout"
            )
        current = _tensor_of(output)
        recorded = self.recorded[self.calls].to(current.device, current.dtype)
        self.calls += 1
        rows = slice(None) if self.rows is None else self._rows_for(current.shape[0]).to(current.device)
        if self.rows is not None and recorded.shape[0] == current.shape[0]:
            recorded = recorded[rows]  # a recording of the whole batch: take the selected rows from it
        selected = current[rows]
        if recorded.shape != selected.shape:
            raise RuntimeError(
                f"site {self.site!r}: recorded output {tuple(recorded.shape)} does not match {tuple(selected.shape)}"
            )
        if self.positions is not None:
            recorded = selected.clone().index_copy_(
                1, torch.tensor(self.positions, device=current.device), recorded[:, self.positions]
            )
        patched = current.clone()
        patched[rows] = recorded
        return _with_tensor(output, patched)

    def installed(self, adapter: Adapter):
        self.calls = 0
        return _forward_hooks(adapter, {self.site: self._patch})

    def verify(self) -> None:
        if self.calls == 0:
            raise RuntimeError(f"patched site {self.site!r} never ran during generation")
