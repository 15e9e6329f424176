"""What an evaluation produces, as typed records: per-image items, the metrics, and ``evaluation.json``.

Efficacy and generalization: the edited concept's score on the concept prompts and on paraphrases, before and
after; with a scorer that tells presence (``presence_threshold``) also the share of images where it is absent.
Target adoption: for an edit with one target, the share of those images that show it (``ConceptScorer.adopts``: on
the toy world every attribute the target states, read by the probe; otherwise the target beats the concept in CLIP's
zero-shot choice between the two); efficacy stays "the concept is gone".
Specificity (the headline): the share of neighbour and unrelated images that still show what their prompt asks
(``ConceptScorer.follows``: on the toy world every attribute the prompt states, read by the probe; otherwise the
image's own concept wins CLIP's zero-shot classification among the suite's concepts), after the edit relative to
before it on the same seeds. Identity, stricter: the share of those images whose every attribute the scorer reads is
unchanged (scorers without ``predict``: whose own concept is present or absent as before). Also each image's score of
its own concept and pixel similarity (SSIM, PSNR) to the unedited images; on the concept prompts themselves, the share
whose attributes outside the concept are unchanged. Quality: a Frechet distance in the scorer's image-feature space.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from locoedit.core.formats import JsonRecord, to_plain
from locoedit.core.versions import versions
from locoedit.delta.file import EditDelta
from locoedit.evaluate.metrics import frechet_distance
from locoedit.evaluate.suite import GROUPS, EvaluationSuite, SuiteItem
from locoedit.localize import LocalizationResult
from locoedit.models import GenerationSettings
from locoedit.scoring import ConceptScorer

TARGETS = {
    "efficacy": 0.95,
    "generalization": 0.90,
    "specificity": 0.97,
    "identity": 0.90,
    "adoption": 0.90,
    "lookalikes": 0.90,
}
INCEPTION_NOTE = (
    "not computed: Inception FID needs torchvision and Inception weights, which locoedit does not depend "
    "on; the Frechet distance in the table uses the scorer's own image features"
)


@dataclass
class EvaluationItem:
    """One (group, prompt, seed) image pair, before and after the edit, with its scores."""

    group: str
    set: int
    prompt_index: int
    prompt: str
    concept: str  # the text this image's score is about
    seed: int
    before: str  # image paths relative to the evaluation folder
    after: str
    score_before: float
    score_after: float
    ssim: float
    psnr: float
    attributes_before: dict[str, str] | None = None  # every attribute the scorer reads, where it reads them
    attributes_after: dict[str, str] | None = None
    follows_before: bool | None = None  # shows what its prompt asks (neighbour and unrelated images)
    follows_after: bool | None = None
    adopted_before: bool | None = None  # shows the edit's target (concept and paraphrase images of an edit with one)
    adopted_after: bool | None = None

    @classmethod
    def of(cls, item: SuiteItem, **scores) -> EvaluationItem:
        return cls(
            item.group,
            item.set,
            item.prompt_index,
            item.prompt,
            item.concept,
            item.seed,
            before=f"images/before/{item.image}",
            after=f"images/after/{item.image}",
            **scores,
        )

    def _attribute_pair(self) -> tuple[dict[str, str], dict[str, str]]:
        """The attributes before and after; only for images of a scorer that reads them."""
        assert self.attributes_before is not None and self.attributes_after is not None
        return self.attributes_before, self.attributes_after

    def unchanged(self, ignore: frozenset[str] = frozenset()) -> bool:
        before, after = self._attribute_pair()
        return all(before[a] == after[a] for a in before if a not in ignore)


@dataclass(frozen=True)
class ScoreChange:
    before: float
    after: float
    change: float
    before_std: float
    after_std: float


def _mean_std(values: list[float]) -> tuple[float, float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    return tensor.mean().item(), tensor.std().item() if tensor.numel() > 1 else 0.0


def _score_change(items: list[EvaluationItem]) -> ScoreChange:
    before, before_std = _mean_std([i.score_before for i in items])
    after, after_std = _mean_std([i.score_after for i in items])
    return ScoreChange(before, after, after - before, before_std, after_std)


@dataclass(frozen=True)
class ConceptMetrics:
    """Efficacy / generalization on a group of images that show the edited concept."""

    images: int
    score: ScoreChange
    absent_before: float | None = None  # share of images where the concept is absent (scorers with a threshold)
    absent_after: float | None = None
    adopted_before: float | None = None  # share of images showing the edit's target (see EvaluationItem)
    adopted_after: float | None = None

    @property
    def rate(self) -> float | None:
        return self.absent_after

    @classmethod
    def of(cls, items: list[EvaluationItem], threshold: float | None) -> ConceptMetrics | None:
        if not items:
            return None
        adoption = {}
        if items[0].adopted_after is not None:
            adoption = {
                "adopted_before": sum(bool(i.adopted_before) for i in items) / len(items),
                "adopted_after": sum(bool(i.adopted_after) for i in items) / len(items),
            }
        if threshold is None:
            return cls(len(items), _score_change(items), **adoption)
        absent = lambda scores: sum(s < threshold for s in scores) / len(scores)
        return cls(
            len(items),
            _score_change(items),
            absent([i.score_before for i in items]),
            absent([i.score_after for i in items]),
            **adoption,
        )


@dataclass(frozen=True)
class GroupSpecificity:
    """Neighbour or unrelated images (or one prompt set of them): did they stay as they were?"""

    images: int
    score: ScoreChange  # each image's score of its own concept
    ssim: float
    psnr: float
    present_before: float | None = None
    present_after: float | None = None
    presence_unchanged: float | None = None
    attributes_unchanged: float | None = None
    concept: str | None = None  # for one prompt set: the concept it shows
    sets: list[GroupSpecificity] = field(default_factory=list)

    @classmethod
    def of(
        cls, items: list[EvaluationItem], threshold: float | None, with_attributes: bool, concept: str | None = None
    ) -> GroupSpecificity:
        presence = {}
        if threshold is not None:
            before = [i.score_before >= threshold for i in items]
            after = [i.score_after >= threshold for i in items]
            presence = dict(
                present_before=sum(before) / len(items),
                present_after=sum(after) / len(items),
                presence_unchanged=sum(b == a for b, a in zip(before, after)) / len(items),
            )
        unchanged = sum(i.unchanged() for i in items) / len(items) if with_attributes else None
        sets = []
        if concept is None:
            indices = sorted({i.set for i in items})
            sets = [
                cls.of(
                    [i for i in items if i.set == s],
                    threshold,
                    with_attributes,
                    next(i.concept for i in items if i.set == s),
                )
                for s in indices
            ]
        return cls(
            len(items),
            _score_change(items),
            _mean_std([i.ssim for i in items])[0],
            _mean_std([i.psnr for i in items])[0],
            attributes_unchanged=unchanged,
            concept=concept,
            sets=sets,
            **presence,
        )


@dataclass(frozen=True)
class OtherAttributes:
    """On images of the edited concept: were the attributes it is not about left alone?"""

    images: int
    ignored: list[str]
    rate: float
    per_attribute: dict[str, float]

    @classmethod
    def of(cls, items: list[EvaluationItem], ignore: frozenset[str]) -> OtherAttributes | None:
        if not items:
            return None
        pairs = [i._attribute_pair() for i in items]
        attributes = [a for a in pairs[0][0] if a not in ignore]
        return cls(
            len(items),
            sorted(ignore),
            sum(i.unchanged(ignore) for i in items) / len(items),
            {a: sum(before[a] == after[a] for before, after in pairs) / len(items) for a in attributes},
        )


@dataclass(frozen=True)
class SpecificityMetrics:
    neighbours: GroupSpecificity | None
    unrelated: GroupSpecificity | None
    ssim: float  # mean over neighbour and unrelated images
    psnr: float
    rate: float | None  # the headline specificity (see rate_basis)
    rate_basis: str | None
    other_attributes: OtherAttributes | None
    follows_before: float | None = None  # share of images showing what their prompt asks, before and after
    follows_after: float | None = None
    identity: float | None = None  # the stricter figure (see identity_basis)
    identity_basis: str | None = None
    lookalikes: GroupSpecificity | None = None  # prompts entangled with the concept (the suite's lookalikes)
    lookalikes_rate: float | None = None  # the third figure: their images still showing what they ask, after / before


def _retention(items: list[EvaluationItem]) -> float | None:
    """The share of ``items`` showing what their prompt asks after the edit, relative to before (None: no items, or
    none did before)."""
    before = sum(bool(i.follows_before) for i in items)
    return sum(bool(i.follows_after) for i in items) / before if before else None


@dataclass(frozen=True)
class QualityMetrics:
    features: str | None  # the feature space of the Frechet distances
    frechet_distance: float | None
    frechet_distance_specificity: float | None = None  # on neighbour and unrelated images only
    images: int | None = None
    note: str | None = None
    inception_fid: float | None = None
    inception_fid_note: str = INCEPTION_NOTE


@dataclass(frozen=True)
class Metrics:
    efficacy: ConceptMetrics
    generalization: ConceptMetrics | None
    specificity: SpecificityMetrics
    quality: QualityMetrics

    @classmethod
    def of(
        cls,
        items: list[EvaluationItem],
        scorer: ConceptScorer,
        concept: str,
        features: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> Metrics:
        """``features``: the scorer's image features before and after, [items, dim] each, or None."""
        threshold = scorer.presence_threshold
        with_attributes = bool(items) and items[0].attributes_before is not None
        group = {g: [i for i in items if i.group == g] for g in GROUPS}
        others = group["neighbours"] + group["unrelated"]
        follows_before = sum(bool(i.follows_before) for i in others) / len(others)
        follows_after = sum(bool(i.follows_after) for i in others) / len(others)
        rate = _retention(others)  # undefined when none did before
        basis = (
            "neighbour and unrelated images that show what their prompt asks, after the edit relative to before "
            "(same seeds)"
        )
        identity, identity_basis, other_attributes = None, None, None
        if with_attributes:
            identity = sum(i.unchanged() for i in others) / len(others)
            identity_basis = "every attribute the scorer reads is unchanged (neighbour and unrelated images)"
            other_attributes = OtherAttributes.of(
                group["concept"] + group["paraphrases"], frozenset(scorer.concept_attributes(concept))
            )
        elif threshold is not None:
            identity = sum((i.score_before >= threshold) == (i.score_after >= threshold) for i in others) / len(others)
            identity_basis = "each neighbour / unrelated image's own concept is present or absent as before"
        neighbours, unrelated, lookalikes = (
            GroupSpecificity.of(group[g], threshold, with_attributes) if group[g] else None
            for g in ("neighbours", "unrelated", "lookalikes")
        )
        specificity = SpecificityMetrics(
            neighbours,
            unrelated,
            _mean_std([i.ssim for i in others])[0],
            _mean_std([i.psnr for i in others])[0],
            rate,
            basis,
            other_attributes,
            follows_before,
            follows_after,
            identity,
            identity_basis,
            lookalikes,
            _retention(group["lookalikes"]),
        )
        if features is None:
            quality = QualityMetrics(
                scorer.feature_name,
                None,
                note=f"the scorer {scorer.spec!r} has no image features, so no Frechet distance was computed",
            )
        else:
            before, after = features
            unedited = torch.tensor([i.group in ("neighbours", "unrelated") for i in items])
            quality = QualityMetrics(
                scorer.feature_name,
                frechet_distance(before, after),
                frechet_distance(before[unedited], after[unedited]) if unedited.sum() >= 2 else None,
                len(items),
            )
        efficacy = ConceptMetrics.of(group["concept"], threshold)
        assert efficacy is not None  # a suite has concept prompts and seeds
        return cls(
            efficacy,
            ConceptMetrics.of(group["paraphrases"], threshold),
            specificity,
            quality,
        )


@dataclass(frozen=True)
class Headline:
    """The numbers a README table needs: rates where the scorer can tell presence, else None."""

    efficacy: float | None
    generalization: float | None
    specificity: float | None
    identity: float | None
    other_attributes: float | None
    concept_score_before: float
    concept_score_after: float
    ssim: float
    psnr: float
    frechet_distance: float | None
    adoption: float | None = None  # concept images showing the edit's target after it (None: no single target)
    lookalikes: float | None = None  # the suite's look-alike prompts still shown as asked, after / before


@dataclass(frozen=True)
class WindowEffect:
    layers: list[int]
    effect: float
    effect_std: float


@dataclass(frozen=True)
class EffectCurve:
    """A LocoGen run's per-window effects, as an evaluation report plots them."""

    source: str
    concept: str
    window_size: int
    num_layers: int
    full_swap_effect: float
    windows: list[WindowEffect]
    chosen: list[int]

    @classmethod
    def of(cls, result: LocalizationResult, source: str) -> EffectCurve:
        return cls(
            source,
            result.concept,
            result.window_size,
            len(result.layers),
            result.full_swap_effect,
            [WindowEffect(w.layers, w.effect, w.effect_std) for w in result.windows],
            list(result.chosen.layers),
        )


@dataclass(frozen=True)
class DeltaSummary:
    """What was evaluated."""

    path: str | None
    base_model: str
    method: str
    layers: list[dict]
    parameters: list[str]
    settings: dict

    @classmethod
    def of(cls, delta: EditDelta, path: str | None) -> DeltaSummary:
        return cls(path, delta.base_model, delta.method, delta.layers, delta.parameters, delta.settings)


NOT_IN_JSON = {"json": False}


@dataclass
class EvaluationResult(JsonRecord):
    """``evaluation.json``; ``headline``, ``targets`` and ``meets_targets`` are written for readers and recomputed
    on reading. ``before`` / ``after`` hold the images in memory only ([items, 3, H, W])."""

    FORMAT = "locoedit.evaluation/1"

    suite: EvaluationSuite
    settings: GenerationSettings
    scorer: str
    delta: DeltaSummary
    items: list[EvaluationItem]
    metrics: Metrics
    localization: EffectCurve | None = None
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=versions)
    before: torch.Tensor | None = field(default=None, repr=False, metadata=NOT_IN_JSON)
    after: torch.Tensor | None = field(default=None, repr=False, metadata=NOT_IN_JSON)

    @property
    def headline(self) -> Headline:
        m = self.metrics
        return Headline(
            efficacy=m.efficacy.rate,
            generalization=None if m.generalization is None else m.generalization.rate,
            specificity=m.specificity.rate,
            identity=m.specificity.identity,
            other_attributes=None if m.specificity.other_attributes is None else m.specificity.other_attributes.rate,
            concept_score_before=m.efficacy.score.before,
            concept_score_after=m.efficacy.score.after,
            ssim=m.specificity.ssim,
            psnr=m.specificity.psnr,
            frechet_distance=m.quality.frechet_distance,
            adoption=m.efficacy.adopted_after,
            lookalikes=m.specificity.lookalikes_rate,
        )

    def meets_targets(self) -> dict[str, bool | None]:
        """Per rate with a target (TARGETS): whether it is met; None where it was not measured."""
        headline = self.headline
        return {
            name: None if getattr(headline, name) is None else getattr(headline, name) >= target
            for name, target in TARGETS.items()
        }

    def to_json(self) -> dict:
        data = super().to_json()
        data.update(headline=to_plain(self.headline), targets=dict(TARGETS), meets_targets=self.meets_targets())
        return data


def read_evaluation(folder) -> EvaluationResult:
    """The ``evaluation.json`` of a ``locoedit evaluate`` run folder (for a model card: ``locoedit.delta.card``)."""
    from pathlib import Path

    return EvaluationResult.read(Path(folder) / "evaluation.json")
