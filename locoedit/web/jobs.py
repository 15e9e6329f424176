"""The web app's jobs: one at a time per model, in the order they came, and visible to every browser tab.

A job that changes the model in memory (a delta installed to generate) is one job, so no other job ever sees the
model edited; a job that fails records the same one line the command line prints.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from locoedit.core.errors import user_message
from locoedit.core.progress import ProgressCallback, ProgressEvent

WAITING, RUNNING, DONE, FAILED = "waiting", "running", "done", "failed"


@dataclass
class Job:
    id: int
    model: str
    title: str  # what the job does, e.g. "localize 'striped'"
    state: str = WAITING
    progress: str = ""  # the latest progress event, e.g. "windows of 2: 40/200 step"
    message: str = ""  # a failed job's one-line error

    def report(self, event: ProgressEvent) -> None:
        self.progress = f"{event.task}: {event.done}/{event.total} {event.unit}"


def failure_line(error: BaseException) -> str:
    """The one line shown for a failed job: the CLI's line for a user error; for anything else (a bug) its type, the
    traceback going to the server's log instead of the page."""
    return user_message(error) or (
        f"error: {type(error).__name__} inside locoedit (a bug; the server's log has the traceback)"
    )


class JobQueue:
    """First come, first served per model; jobs of different models run side by side. Keeps the last
    ``keep_finished`` finished jobs for display."""

    def __init__(self, keep_finished: int = 10):
        self._changed = threading.Condition()
        self._jobs: list[Job] = []
        self._next_id = 1
        self._keep_finished = keep_finished

    def _turn(self, job: Job) -> bool:
        """Whether ``job`` may start: it is the oldest unfinished job of its model."""
        return next(j for j in self._jobs if j.model == job.model and j.state in (WAITING, RUNNING)) is job

    @contextmanager
    def run(self, model: str, title: str, progress: ProgressCallback | None = None) -> Iterator[ProgressCallback]:
        """Wait for the model's turn, then run the ``with`` block as the job. Yields the progress callback to hand
        the library: it updates the job (which every tab shows) and calls ``progress``. A failure is recorded as one
        line and raised again."""
        with self._changed:
            job = Job(self._next_id, model, title)
            self._next_id += 1
            self._jobs.append(job)
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._turn(job))
            job.state = RUNNING
            self._changed.notify_all()

        def report(event: ProgressEvent) -> None:
            job.report(event)
            if progress is not None:
                progress(event)

        try:
            yield report
        except BaseException as error:
            job.message = failure_line(error)
            self._finish(job, FAILED)
            raise
        self._finish(job, DONE)

    def _finish(self, job: Job, state: str) -> None:
        with self._changed:
            job.state = state
            finished = [j for j in self._jobs if j.state in (DONE, FAILED)]
            for old in finished[: max(0, len(finished) - self._keep_finished)]:
                self._jobs.remove(old)
            self._changed.notify_all()

    def snapshot(self) -> list[Job]:
        """Copies of the jobs: running and waiting ones in order, then the finished ones kept."""
        with self._changed:
            order = {RUNNING: 0, WAITING: 1, DONE: 2, FAILED: 2}
            return [replace(job) for job in sorted(self._jobs, key=lambda j: (order[j.state], j.id))]
