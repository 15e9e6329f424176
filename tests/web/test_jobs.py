"""The web app's job queue, without a browser: one job at a time per model in arrival order, seen by every caller;
a failure is the CLI's one line and frees the model for the next job."""

import threading
import time

import pytest

from locoedit.core.errors import LocoeditError
from locoedit.core.progress import ProgressEvent
from locoedit.web.jobs import DONE, FAILED, RUNNING, WAITING, JobQueue


def _states(queue):
    return [(job.title, job.state) for job in queue.snapshot()]


def _until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _start(queue, model, title, release: threading.Event, order: list):
    def work():
        with queue.run(model, title):
            order.append(title)
            release.wait(10)

    thread = threading.Thread(target=work)
    thread.start()
    _until(lambda: any(job.title == title for job in queue.snapshot()))
    return thread


def test_jobs_of_one_model_run_one_at_a_time_in_arrival_order_and_every_caller_sees_the_queue():
    queue, order = JobQueue(), []
    releases = {name: threading.Event() for name in ("a", "b", "c", "other")}
    threads = [_start(queue, "toyworld", name, releases[name], order) for name in ("a", "b", "c")]
    threads.append(_start(queue, "other-model", "other", releases["other"], order))
    _until(lambda: ("other", RUNNING) in _states(queue))  # another model's job does not wait
    assert _states(queue) == [("a", RUNNING), ("other", RUNNING), ("b", WAITING), ("c", WAITING)]
    releases["a"].set()
    _until(lambda: ("b", RUNNING) in _states(queue))
    assert ("c", WAITING) in _states(queue)
    releases["b"].set(), releases["c"].set(), releases["other"].set()
    for thread in threads:
        thread.join(10)
    assert order.index("a") < order.index("b") < order.index("c")
    assert {state for _, state in _states(queue)} == {DONE}


def test_a_failed_job_shows_the_cli_line_and_the_next_job_runs():
    queue = JobQueue()
    with pytest.raises(LocoeditError), queue.run("toyworld", "localize"):
        raise LocoeditError("a prompt or target is empty; every --prompt and --target needs text")
    with queue.run("toyworld", "edit"):
        pass
    failed, done = queue.snapshot()
    assert (failed.state, failed.message) == (
        FAILED,
        "error: a prompt or target is empty; every --prompt and --target needs text",
    )
    assert (done.title, done.state) == ("edit", DONE)


def test_an_unexpected_error_is_one_line_that_names_a_bug_not_a_traceback():
    queue = JobQueue()
    with pytest.raises(ZeroDivisionError), queue.run("toyworld", "edit"):
        1 / 0
    message = queue.snapshot()[0].message
    assert message.startswith("error: ZeroDivisionError inside locoedit (a bug") and "\n" not in message


def test_progress_reaches_the_job_and_the_caller():
    queue, seen = JobQueue(), []
    with queue.run("toyworld", "localize", seen.append) as report:
        report(ProgressEvent("windows of 2", 3, 40))
        assert queue.snapshot()[0].progress == "windows of 2: 3/40 step"
    assert seen == [ProgressEvent("windows of 2", 3, 40)]


def test_only_the_last_finished_jobs_are_kept():
    queue = JobQueue(keep_finished=2)
    for title in ("a", "b", "c"):
        with queue.run("toyworld", title):
            pass
    assert [job.title for job in queue.snapshot()] == ["b", "c"]
