"""Terminal rendering of the library's progress events."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from locoedit.core.progress import ProgressCallback, ProgressEvent


class TerminalProgress:
    """Draws each task's events as a tqdm bar on stderr; one bar per running task."""

    def __init__(self):
        self._bars: dict[str, tqdm] = {}

    def __call__(self, event: ProgressEvent) -> None:
        bar = self._bars.get(event.task)
        if bar is None:
            bar = self._bars[event.task] = tqdm(total=event.total, desc=event.task, unit=event.unit, leave=False)
        bar.update(event.done - bar.n)
        if event.finished:
            bar.close()
            del self._bars[event.task]


def terminal_progress(wanted: bool | None) -> ProgressCallback | None:
    """A terminal renderer if ``wanted`` (None: when stderr is a terminal, so that logs are not flooded with
    carriage returns), else None."""
    if wanted is None:
        wanted = sys.stderr.isatty()
    return TerminalProgress() if wanted else None
