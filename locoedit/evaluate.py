"""Evaluate an edit: did the concept go (efficacy, generalization), and what else changed (specificity, quality)?

An :class:`EvaluationSuite` is data (``locoedit/data/suites/NAME.json`` or any JSON file of the same form): the
concept text to score, prompts that show the concept, paraphrases of them, neighbouring concepts (each with its own
prompts and its own concept text), unrelated prompts, and seeds. :func:`evaluate` generates every (prompt, seed)
with the unedited model, applies the delta, generates them again from the same seeds, and reverts the delta in
``finally``: the model is left exactly as it was found. Then, per group, before and after:

- *efficacy*        concept score on the concept prompts;
- *generalization*  concept score on the paraphrases;
- *specificity*     each neighbour / unrelated prompt's score of its *own* concept, and the pixel similarity (SSIM,
                    PSNR) of its images to the unedited model's;
- *quality*         a Frechet distance between the feature sets before and after (the scorer's image features:
                    the toy-world probe's penultimate layer, or CLIP's image embedding). Inception FID is not
                    computed: it needs torchvision and Inception weights, which locoedit does not depend on.

With a scorer that can tell presence (``presence_threshold``; the toy-world probe: probability >= 0.5) the same
groups also get rates: efficacy = fraction of concept-prompt images where the concept is absent after the edit
(before the edit as the baseline), generalization the same on paraphrases, and specificity = fraction of neighbour /
unrelated images whose attributes as the scorer reads them (``predict``) are all unchanged by the edit; on the
concept prompts themselves, the fraction whose attributes outside the concept are unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

import torch
from tqdm.auto import tqdm

from locoedit import __version__
from locoedit.adapters import Adapter, GenerationSettings
from locoedit.delta import EditDelta
from locoedit.errors import LocoeditError
from locoedit.generate import settings_for
from locoedit.io import write_json, write_png, write_text
from locoedit.metrics import frechet_distance, psnr, ssim
from locoedit.scoring import ConceptScorer, Scorer

logger = logging.getLogger(__name__)

KINDS = ("style", "object", "fact")
GROUPS = ("concept", "paraphrases", "neighbours", "unrelated")
TARGETS = {"efficacy": 0.90, "generalization": 0.90, "specificity": 0.95, "other_attributes": 0.95}
FORMAT = "locoedit-evaluation/1"
_SUITES_PACKAGE_DIR = "data/suites"
_EXAMPLE = "locoedit/data/suites/toyworld-style-kandinsky.json"

# ---------------------------------------------------------------------------------------------------- suite


@dataclass(frozen=True)
class PromptSet:
    """Prompts that show one concept, and the text to score that concept with."""

    concept: str
    prompts: tuple[str, ...]

    def to_json(self) -> dict:
        return {"concept": self.concept, "prompts": list(self.prompts)}


_REQUIRED = ("name", "kind", "concept", "concept_prompts", "paraphrases", "neighbours", "unrelated", "seeds")
_OPTIONAL = ("description", "edit_concept", "model", "scorer", "steps", "guidance", "size")


def _strings(value, where: str, allow_empty: bool = True) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise LocoeditError(f"suite field {where} must be a list of prompts (strings), got {type(value).__name__}")
    if not allow_empty and not value:
        raise LocoeditError(f"suite field {where} is empty; give at least one prompt")
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise LocoeditError(f"suite field {where} holds {item!r}; every prompt must be a non-empty string")
    return tuple(value)


def _prompt_sets(value, where: str) -> tuple[PromptSet, ...]:
    """A list whose items are {"concept": TEXT, "prompts": [...]} or a plain prompt (scored against itself)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise LocoeditError(
            f"suite field {where} must be a list of {{\"concept\": ..., \"prompts\": [...]}} objects or prompts"
        )
    sets = []
    for i, item in enumerate(value):
        if isinstance(item, PromptSet):
            sets.append(item)
        elif isinstance(item, str) and item.strip():
            sets.append(PromptSet(item, (item,)))
        elif isinstance(item, dict):
            missing = [key for key in ("concept", "prompts") if key not in item]
            extra = sorted(set(item) - {"concept", "prompts"})
            if missing or extra:
                problem = f"lacks {', '.join(missing)}" if missing else f"has unknown fields {', '.join(extra)}"
                raise LocoeditError(
                    f"suite field {where}[{i}] {problem}; each entry is {{\"concept\": TEXT TO SCORE, \"prompts\": "
                    "[PROMPTS SHOWING IT]}} or a plain prompt string"
                )
            concept = item["concept"]
            if not isinstance(concept, str) or not concept.strip():
                raise LocoeditError(f"suite field {where}[{i}].concept must be non-empty text to score")
            sets.append(PromptSet(concept, _strings(item["prompts"], f"{where}[{i}].prompts", allow_empty=False)))
        else:
            raise LocoeditError(f"suite field {where}[{i}] is {item!r}; give a prompt or a concept/prompts object")
    return tuple(sets)


@dataclass(frozen=True)
class EvaluationSuite:
    """What to generate and score to evaluate an edit of one concept. Validates on construction."""

    name: str
    kind: str  # style, object or fact
    concept: str  # the text the scorer scores the edited concept with, e.g. "in the style of kandinsky"
    concept_prompts: tuple[str, ...]  # prompts that show the concept (efficacy)
    paraphrases: tuple[str, ...]  # other wordings and contexts of it (generalization); may be empty
    neighbours: tuple[PromptSet, ...]  # neighbouring concepts: other artists, other objects (specificity)
    unrelated: tuple[PromptSet, ...]  # prompts with nothing to do with the concept (specificity)
    seeds: tuple[int, ...]
    description: str = ""
    edit_concept: str = ""  # the --concept an edit of this names (picks the suite when --suite is not given)
    model: str | None = None  # the model the suite is written for ("toyworld"), or None for any
    scorer: str | None = None  # scorer hint: "toyworld" or "clip:ID"
    steps: int | None = None  # generation settings; None = the model's defaults
    guidance: float | None = None
    size: int | None = None

    def __post_init__(self):
        for name in ("name", "concept"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise LocoeditError(f"suite field {name} must be non-empty text, got {value!r}")
        if self.kind not in KINDS:
            raise LocoeditError(f"suite field kind is {self.kind!r}; use one of {', '.join(KINDS)}")
        object.__setattr__(self, "concept_prompts", _strings(self.concept_prompts, "concept_prompts", allow_empty=False))
        object.__setattr__(self, "paraphrases", _strings(self.paraphrases, "paraphrases"))
        object.__setattr__(self, "neighbours", _prompt_sets(self.neighbours, "neighbours"))
        object.__setattr__(self, "unrelated", _prompt_sets(self.unrelated, "unrelated"))
        if not self.neighbours and not self.unrelated:
            raise LocoeditError(
                "suite has no neighbours and no unrelated prompts, so specificity cannot be measured; give at least one"
            )
        seeds = self.seeds
        if isinstance(seeds, (str, int)) or not isinstance(seeds, (list, tuple)) or not seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds
        ):
            raise LocoeditError(f"suite field seeds must be a non-empty list of integers >= 0, got {seeds!r}")
        object.__setattr__(self, "seeds", tuple(seeds))
        for name in ("steps", "size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise LocoeditError(f"suite field {name} must be a positive integer or null, got {value!r}")
        if self.guidance is not None and (isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float))):
            raise LocoeditError(f"suite field guidance must be a number or null, got {self.guidance!r}")

    # -- reading and writing

    @classmethod
    def from_json(cls, data, source: str = "the suite") -> EvaluationSuite:
        """Build a suite from its JSON form; missing or unknown fields are named, with the fix."""
        if not isinstance(data, dict):
            raise LocoeditError(f"{source} must hold a JSON object with the fields {', '.join(_REQUIRED)}")
        missing = [name for name in _REQUIRED if name not in data]
        if missing:
            raise LocoeditError(
                f"{source} lacks the field(s) {', '.join(missing)}; a suite needs {', '.join(_REQUIRED)} "
                f"(optional: {', '.join(_OPTIONAL)}); copy a shipped one, e.g. {_EXAMPLE}"
            )
        unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL) - {"_comment"})
        if unknown:
            raise LocoeditError(
                f"{source} has unknown field(s) {', '.join(unknown)}; the fields are {', '.join(_REQUIRED + _OPTIONAL)}"
            )
        try:
            return cls(**{k: v for k, v in data.items() if k != "_comment"})
        except LocoeditError as error:
            raise LocoeditError(f"{source}: {error}") from None

    def to_json(self) -> dict:
        data = asdict(self)
        data["concept_prompts"], data["paraphrases"], data["seeds"] = (
            list(self.concept_prompts), list(self.paraphrases), list(self.seeds))
        data["neighbours"] = [s.to_json() for s in self.neighbours]
        data["unrelated"] = [s.to_json() for s in self.unrelated]
        return data

    @classmethod
    def load(cls, name_or_path: str | Path) -> EvaluationSuite:
        """A shipped suite by name (see :func:`shipped_suites`) or a suite JSON file by path."""
        path = Path(name_or_path).expanduser()
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise LocoeditError(f"suite file {path} is not valid JSON ({error})") from None
            return cls.from_json(data, f"suite file {path}")
        text = str(name_or_path)
        shipped = shipped_suites()
        if text in shipped:
            return cls.from_json(json.loads(shipped[text].read_text()), f"shipped suite {text!r}")
        if text.endswith(".json") or "/" in text or path.is_dir():
            raise LocoeditError(f"suite file {text} does not exist (or is not a file); give a suite .json file or a "
                                f"shipped suite name: {', '.join(shipped)}")
        raise LocoeditError(
            f"unknown suite {text!r}; shipped suites: {', '.join(shipped)}; or give the path of a suite .json file"
        )

    # -- the rows to generate

    @property
    def concepts(self) -> list[str]:
        """Every text the scorer will be asked to score."""
        return list(dict.fromkeys([self.concept] + [s.concept for s in self.neighbours + self.unrelated]))

    def items(self) -> list[dict]:
        """One entry per (group, prompt, seed) to generate, with the concept it is scored against."""
        sets = {
            "concept": [PromptSet(self.concept, self.concept_prompts)],
            "paraphrases": [PromptSet(self.concept, self.paraphrases)] if self.paraphrases else [],
            "neighbours": list(self.neighbours),
            "unrelated": list(self.unrelated),
        }
        rows = []
        for group in GROUPS:
            index = 0
            for set_index, prompt_set in enumerate(sets[group]):
                for prompt in prompt_set.prompts:
                    for seed in self.seeds:
                        rows.append({"group": group, "set": set_index, "prompt_index": index, "prompt": prompt,
                                     "concept": prompt_set.concept, "seed": seed,
                                     "image": f"{group}/p{index}_s{seed}.png"})
                    index += 1
        return rows


def shipped_suites() -> dict[str, Path]:
    """Name -> file of every suite shipped in ``locoedit/data/suites``."""
    folder = resources.files("locoedit").joinpath(_SUITES_PACKAGE_DIR)
    return {Path(str(f)).stem: Path(str(f)) for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".json")}


def suite_for_delta(delta: EditDelta, model: str) -> EvaluationSuite:
    """The shipped suite for the concept a delta edits (when --suite is not given), or a clear error."""
    concepts = [c.strip().lower() for c in delta.settings.get("concepts", [])]
    toy = model == "toyworld"
    matches = []
    for name in shipped_suites():
        suite = EvaluationSuite.load(name)
        names = {suite.concept.strip().lower(), suite.edit_concept.strip().lower()} - {""}
        if names & set(concepts) and (suite.model == "toyworld") == toy:
            matches.append(suite)
    if len(matches) > 1:
        kind = delta.settings.get("kind")
        matches = [s for s in matches if s.kind == kind] or matches
    if len(matches) != 1:
        found = "several: " + ", ".join(s.name for s in matches) if matches else "none"
        raise LocoeditError(
            f"no single shipped suite fits this delta (concepts {concepts}, model {model!r}; found {found}); pass "
            f"--suite with a shipped name ({', '.join(shipped_suites())}) or a suite .json file"
        )
    return matches[0]


# ---------------------------------------------------------------------------------------------------- result


@dataclass
class EvaluationResult:
    suite: EvaluationSuite
    settings: GenerationSettings
    scorer: str
    delta: dict  # what was evaluated: base model, method, layers, settings
    items: list[dict]  # per (group, prompt, seed): scores, similarity, attributes, image paths
    metrics: dict
    localization: dict | None = None  # the LocoGen per-window effects, when known
    timings: dict = field(default_factory=dict)
    before: torch.Tensor | None = field(default=None, repr=False)  # [items, 3, H, W]
    after: torch.Tensor | None = field(default=None, repr=False)  # [items, 3, H, W]

    @property
    def headline(self) -> dict:
        """The numbers a README table needs: rates where the scorer can tell presence, else None."""
        m = self.metrics
        return {
            "efficacy": m["efficacy"].get("rate"),
            "generalization": (m["generalization"] or {}).get("rate"),
            "specificity": m["specificity"].get("rate"),
            "other_attributes": (m["specificity"].get("other_attributes") or {}).get("rate"),
            "concept_score_before": m["efficacy"]["score"]["before"],
            "concept_score_after": m["efficacy"]["score"]["after"],
            "ssim": m["specificity"]["ssim"],
            "psnr": m["specificity"]["psnr"],
            "frechet_distance": m["quality"].get("frechet_distance"),
        }

    def meets_targets(self) -> dict[str, bool | None]:
        """Per rate with a target (TARGETS): whether it is met; None where it was not measured."""
        headline = self.headline
        return {name: None if headline.get(name) is None else headline[name] >= target
                for name, target in TARGETS.items()}

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "suite": self.suite.to_json(),
            "scorer": self.scorer,
            "settings": self.settings.to_json(),
            "delta": self.delta,
            "headline": self.headline,
            "targets": TARGETS,
            "meets_targets": self.meets_targets(),
            "metrics": self.metrics,
            "items": self.items,
            "localization": self.localization,
            "timings": self.timings,
            "versions": _versions(),
        }


def _versions() -> dict:
    import diffusers
    import transformers

    return {"locoedit": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


# ---------------------------------------------------------------------------------------------------- metrics


def _summary(values: torch.Tensor) -> dict:
    values = values.double()
    return {"mean": values.mean().item(), "std": values.std().item() if values.numel() > 1 else 0.0}


def _score_change(before: torch.Tensor, after: torch.Tensor) -> dict:
    b, a = _summary(before), _summary(after)
    return {"before": b["mean"], "after": a["mean"], "change": a["mean"] - b["mean"],
            "before_std": b["std"], "after_std": a["std"]}


def _concept_metrics(items: list[dict], threshold: float | None) -> dict | None:
    """Efficacy / generalization on a group that shows the edited concept."""
    if not items:
        return None
    before = torch.tensor([i["score_before"] for i in items])
    after = torch.tensor([i["score_after"] for i in items])
    result = {"images": len(items), "score": _score_change(before, after)}
    if threshold is not None:
        # A rate: the fraction of images in which the concept is absent (score below the scorer's threshold).
        result["absent_before"] = (before < threshold).double().mean().item()
        result["absent_after"] = (after < threshold).double().mean().item()
        result["rate"] = result["absent_after"]
    return result


def _unchanged(item: dict, ignore: set[str] = frozenset()) -> bool:
    before, after = item["attributes_before"], item["attributes_after"]
    return all(before[a] == after[a] for a in before if a not in ignore)


def _specificity_group(items: list[dict], threshold: float | None, with_attributes: bool) -> dict | None:
    if not items:
        return None
    sets: dict[int, list[dict]] = {}
    for item in items:
        sets.setdefault(item["set"], []).append(item)

    def describe(rows: list[dict]) -> dict:
        before = torch.tensor([i["score_before"] for i in rows])
        after = torch.tensor([i["score_after"] for i in rows])
        entry = {"images": len(rows), "score": _score_change(before, after),
                 "ssim": _summary(torch.tensor([i["ssim"] for i in rows]))["mean"],
                 "psnr": _summary(torch.tensor([i["psnr"] for i in rows]))["mean"]}
        if threshold is not None:
            entry["present_before"] = (before >= threshold).double().mean().item()
            entry["present_after"] = (after >= threshold).double().mean().item()
            entry["presence_unchanged"] = ((before >= threshold) == (after >= threshold)).double().mean().item()
        if with_attributes:
            entry["attributes_unchanged"] = sum(_unchanged(i) for i in rows) / len(rows)
        return entry

    result = describe(items)
    result["sets"] = [{"concept": rows[0]["concept"], **describe(rows)} for _, rows in sorted(sets.items())]
    return result


def _other_attributes(items: list[dict], ignore: set[str]) -> dict | None:
    """On images of the edited concept: were the attributes it is not about left alone?"""
    if not items:
        return None
    attributes = [a for a in items[0]["attributes_before"] if a not in ignore]
    return {
        "images": len(items),
        "ignored": sorted(ignore),
        "rate": sum(_unchanged(i, ignore) for i in items) / len(items),
        "per_attribute": {a: sum(i["attributes_before"][a] == i["attributes_after"][a] for i in items) / len(items)
                          for a in attributes},
    }


def _metrics(items: list[dict], scorer: ConceptScorer, concept: str, features: dict | None) -> dict:
    threshold = scorer.presence_threshold
    with_attributes = bool(items) and "attributes_before" in items[0]
    by_group = {g: [i for i in items if i["group"] == g] for g in GROUPS}
    others = by_group["neighbours"] + by_group["unrelated"]
    specificity = {
        "neighbours": _specificity_group(by_group["neighbours"], threshold, with_attributes),
        "unrelated": _specificity_group(by_group["unrelated"], threshold, with_attributes),
        "ssim": _summary(torch.tensor([i["ssim"] for i in others]))["mean"],
        "psnr": _summary(torch.tensor([i["psnr"] for i in others]))["mean"],
        "rate": None,
        "rate_basis": None,
        "other_attributes": None,
    }
    if with_attributes:
        specificity["rate"] = sum(_unchanged(i) for i in others) / len(others)
        specificity["rate_basis"] = "every attribute the scorer reads is unchanged (neighbour and unrelated images)"
        specificity["other_attributes"] = _other_attributes(
            by_group["concept"] + by_group["paraphrases"], scorer.concept_attributes(concept))
    elif threshold is not None:
        presence = [(i["score_before"] >= threshold) == (i["score_after"] >= threshold) for i in others]
        specificity["rate"] = sum(presence) / len(presence)
        specificity["rate_basis"] = "each neighbour / unrelated image's own concept is present or absent as before"
    quality = {
        "features": scorer.feature_name,
        "inception_fid": None,
        "inception_fid_note": "not computed: Inception FID needs torchvision and Inception weights, which locoedit "
                              "does not depend on; the Frechet distance in the table uses the scorer's own image features",
    }
    if features is None:
        quality["frechet_distance"] = None
        quality["note"] = f"the scorer {scorer.spec!r} has no image features, so no Frechet distance was computed"
    else:
        unedited = torch.tensor([i["group"] in ("neighbours", "unrelated") for i in items])
        quality["images"] = len(items)
        quality["frechet_distance"] = frechet_distance(features["before"], features["after"])
        quality["frechet_distance_specificity"] = (
            frechet_distance(features["before"][unedited], features["after"][unedited]) if unedited.sum() >= 2 else None
        )
    return {
        "efficacy": _concept_metrics(by_group["concept"], threshold),
        "generalization": _concept_metrics(by_group["paraphrases"], threshold),
        "specificity": specificity,
        "quality": quality,
    }


# ---------------------------------------------------------------------------------------------------- run


def _generate(adapter: Adapter, encoded, rows: list[int], seeds: list[int], settings: GenerationSettings,
              batch_size: int, bar: tqdm) -> torch.Tensor:  # [rows, 3, H, W]
    images = []
    for start in range(0, len(rows), batch_size):
        chunk = slice(start, start + batch_size)
        images.append(adapter.generate(encoded.take(rows[chunk]), seeds[chunk], settings, on_step=bar.update))
    return torch.cat(images)


def load_localization(source: str | Path | dict | None) -> dict | None:
    """The per-window effects of a LocoGen run (folder or ``localization.json``), reduced to what the report plots."""
    if source is None:
        return None
    if isinstance(source, dict) and "num_layers" in source:
        return source  # already reduced by this function
    if isinstance(source, dict):
        data, where = source, "the given localization"
    else:
        path = Path(source)
        file = path / "localization.json" if path.is_dir() else path
        if not file.is_file():
            raise LocoeditError(f"{source} holds no localization.json; give the folder of a `locoedit localize` run")
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise LocoeditError(f"{file} is not valid JSON ({error}); rerun `locoedit localize`") from None
        where = str(file)
    try:
        return {
            "source": where,
            "concept": data["concept"],
            "window_size": data["window_size"],
            "num_layers": len(data["layers"]),
            "full_swap_effect": data["full_swap_effect"],
            "windows": [{"layers": w["layers"], "effect": w["effect"], "effect_std": w["effect_std"]}
                        for w in data["windows"]],
            "chosen": data["chosen"]["layers"],
        }
    except (KeyError, TypeError) as error:
        raise LocoeditError(f"{where} is not a LocoGen result (missing {error}); rerun `locoedit localize`") from None


def _localization_from_delta(delta: EditDelta) -> dict | None:
    layers = delta.settings.get("layers")
    if isinstance(layers, str) and layers != "auto" and (Path(layers) / "localization.json").is_file():
        try:
            return load_localization(layers)
        except LocoeditError as error:
            logger.warning("ignoring the delta's localization: %s", error)
    return None


def _describe_delta(delta: EditDelta, path: str | None) -> dict:
    return {"path": path, "base_model": delta.base_model, "method": delta.method, "layers": delta.layers,
            "parameters": sorted(delta.tensors), "settings": delta.settings}


class EvaluationFolder:
    """Where an evaluation is written: images/{before,after}/GROUP/pI_sS.png, evaluation.json, report.html."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def claim(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise LocoeditError(f"output {self.path} is a file; give a folder for --out")
        if self.path.is_dir() and any(self.path.iterdir()) and not (self.path / "evaluation.json").is_file():
            raise LocoeditError(
                f"output folder {self.path} is not empty and holds no evaluation; choose an empty or new --out"
            )
        self.path.mkdir(parents=True, exist_ok=True)

    def write(self, result: EvaluationResult) -> None:
        from locoedit.report import evaluation_report_html

        for item, before, after in zip(result.items, result.before, result.after):
            write_png(self.path / item["before"], before)
            write_png(self.path / item["after"], after)
        data = result.to_json()
        write_json(self.path / "evaluation.json", data)
        write_text(self.path / "report.html", evaluation_report_html(data))


def _check_reuse(reuse: EvaluationResult, items: list[dict], settings: GenerationSettings) -> None:
    key = lambda rows: [(r["prompt"], r["seed"]) for r in rows]  # noqa: E731
    if reuse.before is None or key(reuse.items) != key(items) or reuse.settings != settings:
        raise LocoeditError(
            "reuse: the earlier result was generated from other prompts, seeds or settings (or holds no images); "
            "reuse only a result of the same suite and settings"
        )


def evaluate(
    adapter: Adapter,
    delta: EditDelta,
    suite: EvaluationSuite,
    scorer: Scorer,
    out: str | Path | None = None,
    settings: GenerationSettings | None = None,
    localization: str | Path | dict | None = None,
    batch_size: int = 16,
    progress: bool = True,
    delta_path: str | None = None,
    reuse: EvaluationResult | None = None,
) -> EvaluationResult:
    """Evaluate ``delta`` on ``adapter``'s model with ``suite``: generate before, apply, generate after (same seeds),
    revert in ``finally``, score. The model is left exactly as found; it is never reloaded.

    ``settings`` defaults to the suite's (else the model's) steps, guidance and size. ``localization`` (a LocoGen run
    folder, its ``localization.json``, or that JSON as a dict; default: the run folder the delta's layers came from,
    if any) adds the per-layer effect curve to the report. With ``out``, writes images, ``evaluation.json`` and
    ``report.html`` there.

    ``reuse``: an earlier result of the same unedited model with the same suite items and settings (e.g. another
    edit of the same concept); its "before" images are taken instead of generated again. The caller vouches that the
    model is the same; prompts, seeds and settings are checked.
    """
    if not isinstance(scorer, ConceptScorer):
        raise LocoeditError(
            f"scorer {scorer.spec!r} cannot score a concept in a single image; evaluation needs 'toyworld' or "
            "'clip:ID_OR_FOLDER'"
        )
    if batch_size < 1:
        raise LocoeditError(f"batch_size {batch_size} must be >= 1")
    delta.check(adapter)  # another model, or an edit already applied: refuse before generating anything
    for concept in suite.concepts:
        scorer.check_concept(concept)
    localization = load_localization(localization) if localization is not None else _localization_from_delta(delta)
    settings = settings or settings_for(adapter, suite.steps, suite.guidance, suite.size, suite.size)
    items = suite.items()
    if reuse is not None:
        _check_reuse(reuse, items, settings)
    folder = EvaluationFolder(out) if out is not None else None
    if folder is not None:
        folder.claim()
    started = time.perf_counter()
    prompts = list(dict.fromkeys(item["prompt"] for item in items))
    encoded = adapter.encode(prompts)
    rows = [prompts.index(item["prompt"]) for item in items]
    seeds = [item["seed"] for item in items]
    loops = (1 if reuse is not None else 2) * -(-len(items) // batch_size)
    with tqdm(total=loops * settings.num_inference_steps, desc=f"evaluating {suite.name}", unit="step",
              disable=not progress, leave=False) as bar:
        if reuse is not None:
            before = reuse.before
        else:
            before = _generate(adapter, encoded, rows, seeds, settings, batch_size, bar)
        applied = delta.apply(adapter)
        try:
            after = _generate(adapter, encoded, rows, seeds, settings, batch_size, bar)
        finally:
            applied.revert()
    generation_s = time.perf_counter() - started

    started = time.perf_counter()
    scores_before = torch.empty(len(items))
    scores_after = torch.empty(len(items))
    for concept in suite.concepts:
        index = torch.tensor([i for i, item in enumerate(items) if item["concept"] == concept])
        scores_before[index] = scorer.score(before[index], concept).float()
        scores_after[index] = scorer.score(after[index], concept).float()
    similarity, peak = ssim(before, after), psnr(before, after)
    attributes_before, attributes_after = scorer.predict(before), scorer.predict(after)
    features_before = scorer.features(before)
    features = None if features_before is None else {"before": features_before, "after": scorer.features(after)}
    for i, item in enumerate(items):
        image = item.pop("image")
        item.update(before=f"images/before/{image}", after=f"images/after/{image}",
                    score_before=scores_before[i].item(), score_after=scores_after[i].item(),
                    ssim=similarity[i].item(), psnr=peak[i].item())
        if attributes_before is not None:
            item.update(attributes_before=attributes_before[i], attributes_after=attributes_after[i])
    metrics = _metrics(items, scorer, suite.concept, features)
    timings = {"generation_s": generation_s, "scoring_s": time.perf_counter() - started}
    result = EvaluationResult(suite, settings, scorer.spec, _describe_delta(delta, delta_path), items, metrics,
                              localization, timings, before, after)
    if folder is not None:
        folder.write(result)
    return result


# ---------------------------------------------------------------------------------------------------- request


@dataclass(frozen=True)
class EvaluationRequest:
    """The CLI's ``evaluate``: model, delta file, suite, and overrides. Validates on construction."""

    model: str
    edit: str  # delta file
    suite: str | None = None  # shipped name or JSON file; None = the shipped suite for the delta's concept
    scorer: str | None = None  # None = the suite's hint, else toyworld for the toy model, else CLIP
    localization: str | None = None  # LocoGen run folder for the effect curve
    seeds: tuple[int, ...] = ()  # () = the suite's
    steps: int | None = None
    guidance: float | None = None
    size: int | None = None
    batch_size: int = 16
    dtype: str | None = None  # None = the delta's dtype
    device: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if any(s < 0 for s in self.seeds):
            raise LocoeditError(f"seeds {list(self.seeds)} must be >= 0")
        for name in ("steps", "size", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LocoeditError(f"{name} must be a positive integer, got {value}")

    def to_json(self) -> dict:
        data = asdict(self)
        data["seeds"] = list(self.seeds)
        return data


def evaluate_from_request(request: EvaluationRequest, out: str | Path, default_clip: str, adapter: Adapter | None = None,
                          scorer: Scorer | None = None) -> EvaluationResult:
    """Load the delta (first: bad input fails before the model loads), the suite, the model and the scorer; evaluate."""
    from locoedit.adapters import load_adapter
    from locoedit.localize import DTYPES
    from locoedit.scoring import make_scorer

    delta = EditDelta.load(request.edit)
    suite = EvaluationSuite.load(request.suite) if request.suite else suite_for_delta(delta, request.model)
    if request.seeds:
        suite = replace(suite, seeds=request.seeds)
    localization = load_localization(request.localization)
    spec = request.scorer or suite.scorer or ("toyworld" if request.model == "toyworld" else f"clip:{default_clip}")
    if scorer is None and spec == "pixel":
        raise LocoeditError("scorer 'pixel' cannot score a concept in a single image; evaluation needs 'toyworld' or "
                            "'clip:ID_OR_FOLDER'")
    if request.dtype is not None and request.dtype not in DTYPES:
        raise LocoeditError(f"dtype {request.dtype!r} is unknown; use one of {', '.join(DTYPES)}")
    if adapter is None:
        dtype = DTYPES[request.dtype] if request.dtype else delta.dtype
        adapter = load_adapter(request.model, dtype, request.device)
    delta.check(adapter)
    if scorer is None:
        scorer = make_scorer(spec, adapter.device)
    settings = settings_for(adapter, request.steps or suite.steps,
                            request.guidance if request.guidance is not None else suite.guidance,
                            request.size or suite.size, request.size or suite.size)
    return evaluate(adapter, delta, suite, scorer, out=out, settings=settings, localization=localization,
                    batch_size=request.batch_size, delta_path=str(request.edit))


__all__ = [
    "EvaluationFolder", "EvaluationRequest", "EvaluationResult", "EvaluationSuite", "PromptSet", "TARGETS",
    "evaluate", "evaluate_from_request", "load_localization", "shipped_suites", "suite_for_delta",
]
