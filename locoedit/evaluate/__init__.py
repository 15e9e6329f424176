"""Evaluate an edit: efficacy, generalization, specificity and quality, before vs after with the same seeds."""

from locoedit.evaluate.evaluation import (
    EvaluationFolder,
    EvaluationRequest,
    effect_curve,
    evaluate,
    evaluate_from_request,
)
from locoedit.evaluate.result import TARGETS, EvaluationItem, EvaluationResult, Headline, Metrics
from locoedit.evaluate.suite import EvaluationSuite, PromptSet, SuiteItem, shipped_suites, suite_for_delta

__all__ = [
    "EvaluationFolder",
    "EvaluationItem",
    "EvaluationRequest",
    "EvaluationResult",
    "EvaluationSuite",
    "Headline",
    "Metrics",
    "PromptSet",
    "SuiteItem",
    "TARGETS",
    "effect_curve",
    "evaluate",
    "evaluate_from_request",
    "shipped_suites",
    "suite_for_delta",
]
