"""LocoGen: find the window of cross-attention layers that controls a concept (names load on first use)."""

from typing import TYPE_CHECKING

from locoedit.core.lazy import lazy_exports

if TYPE_CHECKING:
    from locoedit.localize.locogen import LocalizationFolder, LocoGen, localize
    from locoedit.localize.request import LocalizationRequest, Screen, infer_concept, parse_window
    from locoedit.localize.result import ChosenWindow, LocalizationResult, Sweep, WindowResult

__all__ = [
    "ChosenWindow",
    "LocalizationFolder",
    "LocalizationRequest",
    "LocalizationResult",
    "LocoGen",
    "Screen",
    "Sweep",
    "WindowResult",
    "infer_concept",
    "localize",
    "parse_window",
]
__getattr__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("LocalizationFolder", "LocoGen", "localize"), "locogen"),
        **dict.fromkeys(("LocalizationRequest", "Screen", "infer_concept", "parse_window"), "request"),
        **dict.fromkeys(("ChosenWindow", "LocalizationResult", "Sweep", "WindowResult"), "result"),
    },
)
