"""Hidden-state interventions: record a module's outputs during one generation, patch them into another.

A *site* is a module of the denoiser named by its real path (``mid_block.attentions.0``; ``""`` is the denoiser
itself). :class:`ActivationRecorder` keeps every output of its sites, call by call (one call per denoising step
and classifier-free-guidance batch); :class:`ActivationPatch` replaces a site's output at call ``k`` with the
``k``-th recorded one, in all batch rows or in the selected ones. Causal tracing restores a clean run's states
into a corrupted run this way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from locoedit.core.errors import LocoeditError
from locoedit.models import Adapter, Intervention


def _site(adapter: Adapter, name: str) -> torch.nn.Module:
    try:
        return adapter.denoiser.get_submodule(name)
    except AttributeError:
        raise LocoeditError(
            f"the denoiser has no module {name!r}; name a site by its module path, e.g. "
            f"{adapter.layers[0].name!r}"
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
def _forward_hooks(adapter: Adapter, hooks: dict[str, object]) -> Iterator[None]:
    handles = [_site(adapter, name).register_forward_hook(hook) for name, hook in hooks.items()]
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
    bool over the module's own batch, both guidance halves included; None = every row)."""

    def __init__(self, site: str, recorded: Sequence[torch.Tensor], rows: torch.Tensor | None = None):
        self.site = site
        self.recorded = list(recorded)
        self.rows = rows
        self.calls = 0

    def _patch(self, module, args, output):
        if self.calls >= len(self.recorded):
            raise RuntimeError(
                f"site {self.site!r} ran {self.calls + 1} times but only {len(self.recorded)} outputs were recorded; "
                "record and patch with the same steps and batch layout"
            )
        current = _tensor_of(output)
        replacement = self.recorded[self.calls].to(current.device, current.dtype)
        self.calls += 1
        if replacement.shape != current.shape:
            raise RuntimeError(
                f"site {self.site!r}: recorded output {tuple(replacement.shape)} does not match {tuple(current.shape)}"
            )
        if self.rows is not None:
            pick = self.rows.to(current.device).view(-1, *([1] * (current.ndim - 1)))
            replacement = torch.where(pick, replacement, current)
        return _with_tensor(output, replacement)

    def installed(self, adapter: Adapter):
        self.calls = 0
        return _forward_hooks(adapter, {self.site: self._patch})

    def verify(self) -> None:
        if self.calls == 0:
            raise RuntimeError(f"patched site {self.site!r} never ran during generation")
