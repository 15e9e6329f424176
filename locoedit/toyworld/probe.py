"""The probe: small classifiers trained on renders that read every attribute of a picture.

One CNN with a head per attribute (color, background, shape, texture, style). It implements the
Scorer interface: ``score(images, concept)`` is the probe's probability that each image shows
``concept``.

Concepts (phrases of the vocabulary):

- a color ("red"), a shape ("circle"), a texture ("striped"): the probability of that value;
- a background, as "on black" or "black": the probability of that background;
- a style, as "in the style of NAME" or "NAME": the probability of that artist's treatment;
  "no style" is the probability of no treatment;
- a fact entity ("the sun"): the probability of the fact's fixed look, i.e. the product of the
  probabilities of its color, shape and texture (the heads are read independently).
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import torch

from .models import ProbeNet
from .world import ATTRIBUTES, NO_STYLE, load_vocab


def _heads() -> dict[str, tuple[str, ...]]:
    vocab = load_vocab()
    return {a: vocab.values(a) for a in ATTRIBUTES}


class ToyworldProbe:
    """Reads the attributes of toy-world pictures.

    Args:
        net: the trained :class:`ProbeNet`.
        values: attribute -> the values its head predicts, in logit order.
    """

    name = "toyworld"

    def __init__(self, net: ProbeNet, values: dict[str, tuple[str, ...]]):
        self.net = net.eval()
        self.values = {a: tuple(v) for a, v in values.items()}

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def create(cls, width: int = 16, seed: int = 0) -> ToyworldProbe:
        """An untrained probe over the vocabulary's attributes."""
        torch.manual_seed(seed)
        values = _heads()
        return cls(ProbeNet({a: len(v) for a, v in values.items()}, width=width), values)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> ToyworldProbe:
        """Load the shipped probe (or one written by :meth:`save`)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        if path is None:
            from . import PROBE_PATH

            path = PROBE_PATH
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no probe at {path}; train one with `python -m locoedit.toyworld.train`")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        values = {a: tuple(v) for a, v in json.loads(meta["values"]).items()}
        net = ProbeNet({a: len(v) for a, v in values.items()}, width=int(meta["width"]))
        net.load_state_dict(load_file(str(path)))
        return cls(net.to(device), values)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        first_block = typing.cast(torch.nn.Sequential, self.net.body[0])  # ProbeNet's body opens with a conv block
        meta = {"values": json.dumps(self.values), "width": str(first_block[0].out_channels)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path), metadata=meta)

    # -- reading --------------------------------------------------------------------------------

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be float [N, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
        p = next(self.net.parameters())
        images = images.to(device=p.device, dtype=p.dtype)
        if images.shape[-2:] != (32, 32):
            images = torch.nn.functional.interpolate(images, size=(32, 32), mode="area")
        return images.clamp(0, 1)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """attribute -> probabilities [N, n_values] for float images [N, 3, H, W] in [0, 1]."""
        images = self._check(images)
        chunks: dict[str, list[torch.Tensor]] = {a: [] for a in self.values}
        for start in range(0, images.shape[0], batch_size):
            logits = self.net(images[start : start + batch_size])
            for a in self.values:
                chunks[a].append(logits[a].float().softmax(-1).cpu())
        return {a: torch.cat(c) if c else torch.zeros(0, len(self.values[a])) for a, c in chunks.items()}

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """The input of the classification heads, [N, 128] float32 on the CPU (a feature space for Frechet
        distances)."""
        images = self._check(images)
        chunks = [
            self.net.features(images[start : start + batch_size]).float().cpu()
            for start in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(chunks) if chunks else torch.zeros(0, 128)

    def predict(self, images: torch.Tensor) -> list[dict[str, str]]:
        """The most likely value of every attribute, per image (style ``"none"`` for no style)."""
        probs = self.probabilities(images)
        n = next(iter(probs.values())).shape[0]
        idx = {a: p.argmax(-1).tolist() for a, p in probs.items()}
        return [{a: self.values[a][idx[a][i]] for a in self.values} for i in range(n)]

    def concepts(self) -> list[str]:
        """Every concept phrase :meth:`score` accepts."""
        vocab = load_vocab()
        out = list(vocab.colors) + list(vocab.shapes) + list(vocab.textures)
        out += [f"on {b}" for b in vocab.backgrounds] + list(vocab.backgrounds)
        out += [f"in the style of {s}" for s in vocab.styles] + list(vocab.styles) + ["no style"]
        out += list(vocab.facts)
        return out

    def resolve(self, concept: str) -> list[tuple[str, str]]:
        """The (attribute, value) pairs a concept phrase stands for (a fact gives three)."""
        vocab = load_vocab()
        c = " ".join(concept.lower().split())
        if c in vocab.facts:
            return [(a, vocab.facts[c][a]) for a in ("color", "shape", "texture")]
        if c.startswith("on "):
            c_bg = c[3:]
            if c_bg in vocab.backgrounds:
                return [("background", c_bg)]
        if c.startswith("in the style of "):
            c_st = c[len("in the style of ") :]
            if c_st in vocab.styles:
                return [("style", c_st)]
        if c == "no style":
            return [("style", NO_STYLE)]
        for attribute in ("color", "background", "shape", "texture"):
            if c in vocab.values(attribute):
                return [(attribute, c)]
        if c in vocab.styles:
            return [("style", c)]
        raise ValueError(
            f"unknown concept {concept!r} for the toyworld scorer; valid concepts: {', '.join(self.concepts())}"
        )

    def score(self, images: torch.Tensor, concept: str) -> torch.Tensor:
        """The probe's probability that each image shows ``concept``.

        Args:
            images: float [N, 3, H, W] in [0, 1].
            concept: a vocabulary phrase (see the module docstring).

        Returns:
            float [N] in [0, 1].
        """
        pairs = self.resolve(concept)
        probs = self.probabilities(images)
        out = torch.ones(images.shape[0])
        for attribute, value in pairs:
            out = out * probs[attribute][:, self.values[attribute].index(value)]
        return out

    def __call__(self, images: torch.Tensor, concept: str) -> torch.Tensor:
        return self.score(images, concept)
