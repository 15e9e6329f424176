"""Scorers: how much of a concept an image shows, and how much an intervention removed.

A scorer compares intervened images with reference images generated from the same prompts and seeds.
``effect`` is higher when more of the concept is gone:

- ``clip:ID_OR_FOLDER``  CLIP-Score (100 x cosine of image and concept text), reference minus intervened;
- ``toyworld``           the toy world's probe: probability that the image shows the concept, reference minus intervened;
- ``pixel``              mean absolute pixel difference from the reference (weights-free, concept-blind).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.nn.functional as F

from locoedit.core.errors import LocoeditError
from locoedit.models import Adapter

DEFAULT_CLIP = "openai/clip-vit-base-patch16"  # the paper's CLIP-Score model

Images = torch.Tensor  # [batch, 3, H, W] float in [0, 1]


class Scorer(ABC):
    spec: str

    @abstractmethod
    def effect(self, reference: Images, images: Images, concept: str) -> torch.Tensor:  # [batch]
        """Per image: how much of ``concept`` that is in ``reference[i]`` is gone from ``images[i]``."""

    def changed_attributes(self, concept: str, target: str) -> list[tuple[str, str]]:
        """For each attribute this scorer reads that turning ``concept`` into ``target`` changes, the concept's value
        and the target's (a fact "the ocean" -> "a yellow circle": its colour and its shape); empty when it cannot
        tell attributes apart, and then an edit localizes the concept as a whole."""
        return []


class ConceptScorer(Scorer):
    """A scorer that measures a concept's presence in a single image.

    Optional abilities (used by ``locoedit.evaluate``; the defaults say "not available"):
    ``presence_threshold`` (a score at or above it means the concept is in the image), ``check_concept``,
    ``features`` (image features for a Frechet distance), ``predict`` (every attribute the scorer reads) and
    ``concept_attributes`` (which of those attributes a concept stands for). ``follows`` (does an image show what its
    prompt asks) is zero-shot classification among a suite's concepts unless a scorer knows better.
    """

    presence_threshold: float | None = None
    feature_name: str | None = None  # what ``features`` returns, for reports

    @abstractmethod
    def score(self, images: Images, concept: str) -> torch.Tensor:  # [batch], higher = more of the concept
        ...

    def check_concept(self, concept: str) -> None:
        """Raise LocoeditError if this scorer cannot score ``concept`` (before any image is generated)."""

    def features(self, images: Images) -> torch.Tensor | None:  # [batch, dim], or None if unavailable
        return None

    def predict(self, images: Images) -> list[dict[str, str]] | None:  # per image: attribute -> value
        return None

    def concept_attributes(self, concept: str) -> set[str]:
        """The attributes of ``predict`` that ``concept`` is about (an edit of it may change them)."""
        return set()

    def follows(self, images: Images, prompts: list[str], concepts: list[str], candidates: list[str]) -> list[bool]:
        """Per image: does it show what its prompt asks? Here: its own ``concepts[i]`` scores highest among
        ``candidates`` (every concept of the suite), CLIP's zero-shot classification."""
        scores = torch.stack([self.score(images, candidate) for candidate in candidates], 1)  # [batch, candidates]
        return [candidates[best] == concept for best, concept in zip(scores.argmax(1).tolist(), concepts)]

    def reads_target(self, target: str) -> bool:
        """Whether :meth:`adopts` can tell ``target`` in an image."""
        return bool(target.strip())

    def adopts(self, images: Images, target: str, concept: str) -> list[bool]:
        """Per image: does it show the edit's ``target`` rather than its ``concept``? Here: the target's score beats
        the concept's (zero-shot between the two)."""
        return (self.score(images, target) > self.score(images, concept)).tolist()

    def effect(self, reference: Images, images: Images, concept: str) -> torch.Tensor:
        return self.score(reference, concept) - self.score(images, concept)


class PixelScorer(Scorer):
    spec = "pixel"

    def effect(self, reference: Images, images: Images, concept: str) -> torch.Tensor:
        return (images.float() - reference.float()).abs().flatten(1).mean(1)


_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScorer(ConceptScorer):
    """CLIP-Score with transformers CLIP weights (the paper used OpenAI ViT-B/16 and texts like "style of X")."""

    def __init__(self, model_id: str, device: str | torch.device = "cpu"):
        from transformers import AutoTokenizer, CLIPModel

        self.spec = f"clip:{model_id}"
        try:
            self.model = CLIPModel.from_pretrained(model_id).to(device).eval()  # type: ignore[arg-type]  # transformers' @wraps(Module.to)
            self.tokenizer = AutoTokenizer.from_pretrained(model_id)
        except (OSError, ValueError) as error:
            raise LocoeditError(
                f"CLIP weights {model_id!r} are not available ({type(error).__name__}): give a local folder with a "
                "transformers CLIPModel and its tokenizer, or a hub id that is in the cache or reachable"
            ) from error
        self.device = torch.device(device)
        self.image_size = self.model.config.vision_config.image_size
        mean, std = _OPENAI_MEAN, _OPENAI_STD
        preprocessor = Path(model_id) / "preprocessor_config.json"
        if preprocessor.is_file():
            import json

            config = json.loads(preprocessor.read_text())
            mean, std = config.get("image_mean", mean), config.get("image_std", std)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def _pixels(self, images: Images) -> torch.Tensor:
        # CLIP's own preprocessing: shortest side to image_size (bicubic), centre crop, normalise.
        height, width = images.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale)))
        resized = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        cropped = resized[..., top : top + self.image_size, left : left + self.image_size]
        return (cropped - self.mean) / self.std

    @torch.no_grad()
    def score(self, images: Images, concept: str) -> torch.Tensor:
        text = self.tokenizer([concept], padding=True, truncation=True, return_tensors="pt").to(self.device)
        text_features = self.model.get_text_features(**text)
        image_features = self.model.get_image_features(pixel_values=self._pixels(images).to(self.device))
        text_features = getattr(text_features, "pooler_output", text_features)
        image_features = getattr(image_features, "pooler_output", image_features)
        cosine = F.cosine_similarity(image_features.float(), text_features.float())
        # Unclamped (unlike torchmetrics' max(0, .)): differences stay informative for weak encoders.
        return (100 * cosine).cpu()

    feature_name = "CLIP image embedding"

    @torch.no_grad()
    def features(self, images: Images) -> torch.Tensor:  # [batch, projection_dim]
        features = self.model.get_image_features(pixel_values=self._pixels(images).to(self.device))
        return getattr(features, "pooler_output", features).float().cpu()


class ToyworldScorer(ConceptScorer):
    """The toy world's probe: a concept is present when its probability is at least 0.5. Several concepts joined by
    ", " (how a multi-concept edit names what LocoGen scores) are present when any of them is: the largest score."""

    spec = "toyworld"
    presence_threshold = 0.5
    feature_name = "toy-world probe, penultimate layer"

    def __init__(self):
        from locoedit.toyworld.probe import ToyworldProbe

        self.probe = ToyworldProbe.load()

    @staticmethod
    def _parts(concept: str) -> list[str]:
        return [part.strip() for part in concept.split(",")]

    def score(self, images: Images, concept: str) -> torch.Tensor:
        scores = [self.probe.score(images, part).float().cpu() for part in self._parts(concept)]
        return torch.stack(scores).amax(0)

    def check_concept(self, concept: str) -> None:
        for part in self._parts(concept):
            try:
                self.probe.resolve(part)
            except ValueError as error:
                raise LocoeditError(str(error)) from None

    def predict(self, images: Images) -> list[dict[str, str]]:
        return self.probe.predict(images)

    def concept_attributes(self, concept: str) -> set[str]:
        return {attribute for part in self._parts(concept) for attribute, _ in self.probe.resolve(part)}

    def follows(self, images: Images, prompts: list[str], concepts: list[str], candidates: list[str]) -> list[bool]:
        """Per image: every attribute its prompt states (a fact: its colour, shape and texture) is read as stated."""
        from locoedit.toyworld import parse_caption

        predicted = self.predict(images)
        return [
            all(seen.get(attribute) == value for attribute, value in parse_caption(prompt).items() if attribute in seen)
            for seen, prompt in zip(predicted, prompts)
        ]

    @staticmethod
    def _target_attributes(target: str) -> dict[str, str] | None:
        """What a target states, as the probe reads it (a fact: its look); None for text outside the toy world."""
        from locoedit.toyworld import parse_caption

        try:
            stated = parse_caption(target)
        except ValueError:
            return None
        stated.pop("fact", None)
        return stated or None

    def reads_target(self, target: str) -> bool:
        return self._target_attributes(target) is not None

    def changed_attributes(self, concept: str, target: str) -> list[tuple[str, str]]:
        """(The concept's value, the target's) of each attribute the target states otherwise: ("blue", "yellow") and
        ("square", "circle") for the ocean, a blue striped square, -> "a yellow striped circle"; attributes the concept
        does not have are not read."""
        wanted = self._target_attributes(target) or {}
        try:
            own = self.probe.resolve(concept)
        except ValueError:  # not one toy-world concept: localized whole, where check_concept names the problem
            return []
        return [(value, wanted[attribute]) for attribute, value in own if wanted.get(attribute, value) != value]

    def adopts(self, images: Images, target: str, concept: str) -> list[bool]:
        """Per image: every attribute the target states (a fact target: its colour, shape and texture) is read as
        stated."""
        wanted = self._target_attributes(target) or {}
        return [all(seen.get(a) == v for a, v in wanted.items()) for seen in self.predict(images)]

    def features(self, images: Images) -> torch.Tensor:  # [batch, 128]
        return self.probe.features(images)


def make_scorer(spec: str, device: str | torch.device = "cpu") -> Scorer:
    """``pixel``, ``toyworld`` or ``clip:ID_OR_FOLDER``."""
    if spec == "pixel":
        return PixelScorer()
    if spec == "toyworld":
        return ToyworldScorer()
    if spec.startswith("clip:") and len(spec) > len("clip:"):
        return ClipScorer(spec.removeprefix("clip:"), device)
    raise LocoeditError(f"unknown scorer {spec!r}; use 'pixel', 'toyworld' or 'clip:HUB_ID_OR_FOLDER'")


def scorer_spec_for(adapter: Adapter) -> str:
    """The scorer that reads ``adapter``'s concepts by default: the one its model folder names (the toy world: its
    probe), else CLIP-Score with the paper's CLIP."""
    return adapter.recommended.scorer or f"clip:{DEFAULT_CLIP}"


def resolve_scorer(spec: str | None, scorer: Scorer | None, adapter: Adapter) -> Scorer:
    """The scorer given, else the one ``spec`` names, else the model's concept scorer (:func:`scorer_spec_for`)."""
    return scorer if scorer is not None else make_scorer(spec or scorer_spec_for(adapter), adapter.device)
