"""Progress as events: the library reports, front ends (a terminal bar, a web page) draw.

A long task emits a :class:`ProgressEvent` each time it advances. Callers pass a :data:`ProgressCallback`
(or None for silence) to any library function that runs a long task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    task: str  # what is running, e.g. "windows of 3" or "evaluating toyworld-object-circle"
    done: int  # units finished so far in this task
    total: int  # units in the task
    unit: str = "step"  # what a unit is: a denoising step, an image, ...

    @property
    def finished(self) -> bool:
        return self.done >= self.total


ProgressCallback = Callable[[ProgressEvent], None]


class ProgressTask:
    """Counts one task's units and emits an event per advance; a no-op without a callback."""

    def __init__(self, callback: ProgressCallback | None, task: str, total: int, unit: str = "step"):
        self.callback, self.task, self.total, self.unit = callback, task, total, unit
        self.done = 0
        self._emit()

    def advance(self, units: int = 1) -> None:
        self.done += units
        self._emit()

    def _emit(self) -> None:
        if self.callback is not None:
            self.callback(ProgressEvent(self.task, self.done, self.total, self.unit))
