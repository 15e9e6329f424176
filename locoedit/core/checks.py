"""The checks every request repeats: numbers of the right type and range, named in one line with the fix."""

from __future__ import annotations

import math

from locoedit.core.errors import LocoeditError


def check_positive_int(name: str, value, flag: str | None = None) -> None:
    """``value`` is None or an integer >= 1 (never a bool, a float or a string)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise LocoeditError(f"{name} must be a positive integer, got {value!r}" + (f" ({flag})" if flag else ""))


def check_guidance(value) -> None:
    """``value`` is None or a finite number >= 0 (a classifier-free guidance scale)."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf
    ):
        raise LocoeditError(f"guidance must be a finite number >= 0, got {value!r} (--guidance)")
