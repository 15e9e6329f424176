"""The corrupted run of causal tracing: seeded Gaussian noise on the concept's input token embeddings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from locoedit.models import Adapter, Intervention


class TokenEmbeddingNoise(Intervention):
    """While installed, every text encoder adds noise to the input embeddings of the concept's tokens.

    Rows are recognised by their token ids: wherever a row holds one of the ``concept_ids`` sequences (the concept as
    its prompts tokenize it), those positions get ``noise`` x the standard deviation of that encoder's token
    embedding matrix times a fixed Gaussian draw (seeded by ``seed``, the same for every row and every run), so the
    corrupted run is reproducible and the unconditional prompt is never touched. Install it around ``encode``.
    """

    def __init__(self, concept_ids: list[tuple[int, ...]], noise: float, seed: int = 0):
        self.concept_ids = sorted(set(concept_ids), key=len, reverse=True)
        self.noise = noise
        self.seed = seed
        self.sigma: dict[str, float] = {}  # per text encoder, the absolute noise scale used
        self.corrupted = 0  # rows corrupted while installed

    def _spans(self, ids: torch.Tensor) -> list[tuple[int, int]]:  # ids [tokens] -> (start, end) of each occurrence
        row, spans = ids.tolist(), []
        for concept in self.concept_ids:
            for start in range(len(row) - len(concept) + 1):
                if tuple(row[start : start + len(concept)]) == concept:
                    spans.append((start, start + len(concept)))
        return spans

    def _hook(self, sigma: float):
        def add_noise(module, args, output):  # output [batch, tokens, dim]
            ids = args[0] if args else None
            if ids is None:
                return output
            output = output.clone()
            for row in range(ids.shape[0]):
                for start, end in self._spans(ids[row]):
                    draw = torch.Generator().manual_seed(self.seed)
                    noise = torch.randn(end - start, output.shape[-1], generator=draw, dtype=torch.float64)
                    output[row, start:end] += (sigma * noise).to(output.device, output.dtype)
                    self.corrupted += 1
            return output

        return add_noise

    @contextmanager
    def installed(self, adapter: Adapter) -> Iterator[None]:
        with ExitStack() as stack:
            for component in adapter.text_encoder_names:
                encoder = getattr(adapter.pipe, component)
                weight = encoder.get_input_embeddings().weight
                self.sigma[component] = self.noise * weight.detach().float().std().item()
                # T5 looks tokens up through a copy of the module that shares the weight (encoder.embed_tokens).
                for module in encoder.modules():
                    if isinstance(module, torch.nn.Embedding) and module.weight.data_ptr() == weight.data_ptr():
                        handle = module.register_forward_hook(self._hook(self.sigma[component]))
                        stack.callback(handle.remove)
            yield

    def verify(self) -> None:
        if self.corrupted == 0:
            raise RuntimeError("no prompt row held the concept's tokens, so nothing was corrupted")
