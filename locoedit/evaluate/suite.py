"""Evaluation suites as data: what to generate and score to evaluate an edit of one concept.

A suite (``locoedit/data/suites/NAME.json`` or any JSON file of the same form) names the concept text to score,
prompts that show the concept, paraphrases of them, neighbouring concepts (each with its own prompts and its own
concept text), unrelated prompts, and seeds: its **test** split, what ``locoedit evaluate`` reports. An optional
``"validation"`` object holds a second split of the same groups, with other prompts and other seeds, on which
``locoedit tune`` chooses settings. A suite without one is all test split (suites written before splits existed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from locoedit.core.errors import LocoeditError
from locoedit.core.formats import check_format, to_plain
from locoedit.core.seeds import check_seeds
from locoedit.delta.file import EditDelta
from locoedit.edit.templates import KINDS
from locoedit.models import resolve_model

GROUPS = ("concept", "paraphrases", "neighbours", "unrelated", "lookalikes")
FORMAT = "locoedit.suite/1"  # optional in a suite file: suites written by hand need not carry it
_SUITES_PACKAGE_DIR = "data/suites"
_EXAMPLE = "locoedit/data/suites/toyworld-style-kandinsky.json"

# ---------------------------------------------------------------------------------------------------- suite


@dataclass(frozen=True)
class PromptSet:
    """Prompts that show one concept, and the text to score that concept with."""

    concept: str
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class SuiteItem:
    """One image to generate: a prompt of a group, with a seed, and the concept its score is about."""

    group: str  # one of GROUPS
    set: int  # which prompt set of the group (neighbours and unrelated have several)
    prompt_index: int  # position of the prompt within its group
    prompt: str
    concept: str
    seed: int

    @property
    def image(self) -> str:
        return f"{self.group}/p{self.prompt_index}_s{self.seed}.png"


_REQUIRED = ("name", "kind", "concept", "concept_prompts", "paraphrases", "neighbours", "unrelated", "seeds")
_OPTIONAL = ("description", "edit_concept", "model", "scorer", "steps", "guidance", "size", "validation", "lookalikes")
_SPLIT_FIELDS = ("concept_prompts", "paraphrases", "neighbours", "unrelated", "seeds")
_SPLIT_OPTIONAL = ("lookalikes",)
SPLITS = ("validation", "test")


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
            f'suite field {where} must be a list of {{"concept": ..., "prompts": [...]}} objects or prompts'
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
                    f'suite field {where}[{i}] {problem}; each entry is {{"concept": TEXT TO SCORE, "prompts": '
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
class SuiteSplit:
    """The prompts and seeds of one split of a suite (its validation split; the suite's own fields are the test one)."""

    concept_prompts: tuple[str, ...]
    paraphrases: tuple[str, ...]
    neighbours: tuple[PromptSet, ...]
    unrelated: tuple[PromptSet, ...]
    seeds: tuple[int, ...]
    lookalikes: tuple[PromptSet, ...] = ()

    @classmethod
    def from_json(cls, value) -> SuiteSplit:
        if isinstance(value, SuiteSplit):
            return value
        if not isinstance(value, dict):
            raise LocoeditError(f"suite field validation must be an object with {', '.join(_SPLIT_FIELDS)}")
        missing = [name for name in _SPLIT_FIELDS if name not in value]
        unknown = sorted(set(value) - set(_SPLIT_FIELDS) - set(_SPLIT_OPTIONAL))
        if missing or unknown:
            problem = f"lacks {', '.join(missing)}" if missing else f"has unknown fields {', '.join(unknown)}"
            raise LocoeditError(
                f"suite field validation {problem}; it holds {', '.join(_SPLIT_FIELDS)}, like the suite itself"
            )
        return cls(
            _strings(value["concept_prompts"], "validation.concept_prompts", allow_empty=False),
            _strings(value["paraphrases"], "validation.paraphrases"),
            _prompt_sets(value["neighbours"], "validation.neighbours"),
            _prompt_sets(value["unrelated"], "validation.unrelated"),
            check_seeds(value["seeds"], "suite field validation.seeds"),
            _prompt_sets(value.get("lookalikes", []), "validation.lookalikes"),
        )

    def prompts(self) -> set[str]:
        return set(self.concept_prompts + self.paraphrases) | {
            p for s in self.neighbours + self.unrelated + self.lookalikes for p in s.prompts
        }


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
    validation: SuiteSplit | None = None  # the split settings are chosen on; the fields above are the test split
    # prompts entangled with the concept that must keep their look: a fact's look said in words, the facts that
    # carry an edited attribute (specificity's third figure)
    lookalikes: tuple[PromptSet, ...] = ()

    def __post_init__(self):
        for name in ("name", "concept"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise LocoeditError(f"suite field {name} must be non-empty text, got {value!r}")
        if self.kind not in KINDS:
            raise LocoeditError(f"suite field kind is {self.kind!r}; use one of {', '.join(KINDS)}")
        object.__setattr__(
            self, "concept_prompts", _strings(self.concept_prompts, "concept_prompts", allow_empty=False)
        )
        object.__setattr__(self, "paraphrases", _strings(self.paraphrases, "paraphrases"))
        object.__setattr__(self, "neighbours", _prompt_sets(self.neighbours, "neighbours"))
        object.__setattr__(self, "unrelated", _prompt_sets(self.unrelated, "unrelated"))
        object.__setattr__(self, "lookalikes", _prompt_sets(self.lookalikes, "lookalikes"))
        if not self.neighbours and not self.unrelated:
            raise LocoeditError(
                "suite has no neighbours and no unrelated prompts, so specificity cannot be measured; give at least one"
            )
        object.__setattr__(self, "seeds", check_seeds(self.seeds, "suite field seeds"))
        for name in ("steps", "size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise LocoeditError(f"suite field {name} must be a positive integer or null, got {value!r}")
        if self.guidance is not None and (
            isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float))
        ):
            raise LocoeditError(f"suite field guidance must be a number or null, got {self.guidance!r}")
        if self.validation is not None:
            validation = SuiteSplit.from_json(self.validation)
            object.__setattr__(self, "validation", validation)
            if not validation.neighbours and not validation.unrelated:
                raise LocoeditError(
                    "suite field validation has no neighbours and no unrelated prompts; give at least "
                    "one, so that specificity can be measured on it"
                )
            shared_seeds = sorted(set(validation.seeds) & set(self.seeds))
            if shared_seeds:
                raise LocoeditError(
                    f"suite seeds {shared_seeds} are in both the validation and the test split; the "
                    "splits need disjoint seeds"
                )
            shared = sorted(validation.prompts() & self._split().prompts())
            if shared:
                raise LocoeditError(
                    f"suite prompts {shared[:3]} are in both the validation and the test split; the "
                    "splits need disjoint prompts"
                )

    def _split(self) -> SuiteSplit:
        return SuiteSplit(
            self.concept_prompts, self.paraphrases, self.neighbours, self.unrelated, self.seeds, self.lookalikes
        )

    def split(self, name: str) -> EvaluationSuite:
        """The suite of one split: ``test`` (the suite's own prompts and seeds) or ``validation``."""
        if name not in SPLITS:
            raise LocoeditError(f"split {name!r} is unknown; use validation or test")
        if name == "test":
            return replace(self, validation=None)
        if self.validation is None:
            raise LocoeditError(
                f"suite {self.name!r} has no validation split, so settings cannot be chosen apart from "
                'the test prompts; add a "validation" object (other prompts and seeds) to the suite '
                "file, or use a shipped toy-world suite"
            )
        v = self.validation
        return replace(
            self,
            name=f"{self.name}:validation",
            concept_prompts=v.concept_prompts,
            paraphrases=v.paraphrases,
            neighbours=v.neighbours,
            unrelated=v.unrelated,
            seeds=v.seeds,
            lookalikes=v.lookalikes,
            validation=None,
        )

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
        check_format(data, FORMAT, source)
        unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL) - {"_comment", "format"})
        if unknown:
            raise LocoeditError(
                f"{source} has unknown field(s) {', '.join(unknown)}; the fields are {', '.join(_REQUIRED + _OPTIONAL)}"
            )
        try:
            return cls(**{k: v for k, v in data.items() if k not in ("_comment", "format")})
        except LocoeditError as error:
            raise LocoeditError(f"{source}: {error}") from None

    def to_json(self) -> dict:
        return {"format": FORMAT, **to_plain(self)}

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
            raise LocoeditError(
                f"suite file {text} does not exist (or is not a file); give a suite .json file or a "
                f"shipped suite name: {', '.join(shipped)}"
            )
        raise LocoeditError(
            f"unknown suite {text!r}; shipped suites: {', '.join(shipped)}; or give the path of a suite .json file"
        )

    # -- the rows to generate

    @property
    def concepts(self) -> list[str]:
        """Every text the scorer will be asked to score."""
        sets = self.neighbours + self.unrelated + self.lookalikes
        return list(dict.fromkeys([self.concept] + [s.concept for s in sets]))

    def items(self) -> list[SuiteItem]:
        """One entry per (group, prompt, seed) to generate, with the concept it is scored against."""
        sets = {
            "concept": [PromptSet(self.concept, self.concept_prompts)],
            "paraphrases": [PromptSet(self.concept, self.paraphrases)] if self.paraphrases else [],
            "neighbours": list(self.neighbours),
            "unrelated": list(self.unrelated),
            "lookalikes": list(self.lookalikes),
        }
        rows = []
        for group in GROUPS:
            index = 0
            for set_index, prompt_set in enumerate(sets[group]):
                for prompt in prompt_set.prompts:
                    for seed in self.seeds:
                        rows.append(SuiteItem(group, set_index, index, prompt, prompt_set.concept, seed))
                    index += 1
        return rows


def shipped_suites() -> dict[str, Path]:
    """Name -> file of every suite shipped in ``locoedit/data/suites``."""
    folder = resources.files("locoedit").joinpath(_SUITES_PACKAGE_DIR)
    return {
        Path(str(f)).stem: Path(str(f))
        for f in sorted(folder.iterdir(), key=lambda f: f.name)
        if f.name.endswith(".json")
    }


def suite_for_delta(delta: EditDelta, model: str) -> EvaluationSuite:
    """The shipped suite for the concept a delta edits (when --suite is not given), or a clear error."""
    return suite_for_concepts(delta.settings.get("concepts", []), model, delta.settings.get("kind"))


def suite_for_concepts(concepts, model: str, kind: str | None = None) -> EvaluationSuite:
    """The shipped suite for an edit of ``concepts`` on ``model``, or a clear error.

    A suite fits when it scores one of the concepts and is written for this model (or for any model); among several,
    those written for this very model come first, then those of the edit's kind.
    """
    joined = ", ".join(c.strip() for c in concepts).lower()  # a suite for exactly these concepts together
    concepts = {c.strip().lower() for c in concepts}
    location = resolve_model(model)
    matches = []
    for name in shipped_suites():
        suite = EvaluationSuite.load(name)
        names = {suite.concept.strip().lower(), suite.edit_concept.strip().lower()} - {""}
        if (names & (concepts | {joined})) and (suite.model is None or resolve_model(suite.model) == location):
            matches.append(suite)
    for prefer in (
        lambda s: s.edit_concept.strip().lower() == joined,
        lambda s: s.model is not None,
        lambda s: s.kind == kind,
    ):
        if len(matches) > 1:
            matches = [s for s in matches if prefer(s)] or matches
    if len(matches) != 1:
        found = "several: " + ", ".join(s.name for s in matches) if matches else "none"
        raise LocoeditError(
            f"no single shipped suite fits this edit (concepts {sorted(concepts)}, model {model!r}; found {found}); "
            f"pass --suite with a shipped name ({', '.join(shipped_suites())}) or a suite .json file"
        )
    return matches[0]
