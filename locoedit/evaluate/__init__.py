"""Evaluate an edit: efficacy, generalization, specificity and quality, before vs after with the same seeds (names
load on first use)."""

from typing import TYPE_CHECKING

from locoedit.core.lazy import lazy_exports

if TYPE_CHECKING:
    from locoedit.evaluate.evaluation import EvaluationFolder, effect_curve, evaluate, evaluate_from_request
    from locoedit.evaluate.request import EvaluationRequest
    from locoedit.evaluate.result import (
        TARGETS,
        EvaluationItem,
        EvaluationResult,
        Headline,
        Metrics,
        read_evaluation,
    )
    from locoedit.evaluate.suite import EvaluationSuite, PromptSet, SuiteItem, shipped_suites, suite_for_delta

__all__ = [
    "TARGETS",
    "EvaluationFolder",
    "EvaluationItem",
    "EvaluationRequest",
    "EvaluationResult",
    "EvaluationSuite",
    "Headline",
    "Metrics",
    "PromptSet",
    "SuiteItem",
    "effect_curve",
    "evaluate",
    "evaluate_from_request",
    "read_evaluation",
    "shipped_suites",
    "suite_for_delta",
]
__getattr__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("EvaluationFolder", "effect_curve", "evaluate", "evaluate_from_request"), "evaluation"),
        "EvaluationRequest": "request",
        **dict.fromkeys(
            ("TARGETS", "EvaluationItem", "EvaluationResult", "Headline", "Metrics", "read_evaluation"), "result"
        ),
        **dict.fromkeys(("EvaluationSuite", "PromptSet", "SuiteItem", "shipped_suites", "suite_for_delta"), "suite"),
    },
)
