"""LocoGen: find the window of cross-attention layers that controls a concept."""

from locoedit.localize.locogen import LocalizationFolder, LocoGen, localize
from locoedit.localize.request import LocalizationRequest, Screen, infer_concept, parse_window
from locoedit.localize.result import ChosenWindow, LocalizationResult, Sweep, WindowResult

__all__ = [
    "ChosenWindow",
    "LocalizationRequest",
    "LocalizationResult",
    "LocalizationFolder",
    "LocoGen",
    "Screen",
    "Sweep",
    "WindowResult",
    "infer_concept",
    "localize",
    "parse_window",
]
