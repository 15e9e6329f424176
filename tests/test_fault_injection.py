"""Fault injection: kill `localize`, `evaluate` and `apply` with SIGKILL at random points (20 kills in all), rerun the
same command, and compare with an uninterrupted run: identical results and no stray temporary files."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
EDIT = ["edit", "toyworld", "--concept", "circle", "--target", "square", "--layers", "2,3"]
COMMANDS = {  # command -> (arguments, kills)
    "localize": (
        [
            "localize",
            "toyworld",
            "--prompt",
            "a red circle on black",
            "--target",
            "a red shape on black",
            "--window",
            "3",
            "--seeds",
            "0-1",
            "--steps",
            "6",
        ],
        8,
    ),
    "evaluate": (
        [
            "evaluate",
            "toyworld",
            "--edit",
            "{delta}",
            "--suite",
            "toyworld-object-circle",
            "--seeds",
            "0-1",
            "--steps",
            "6",
            "--batch-size",
            "4",
        ],
        7,
    ),
    "apply": (["apply", "toyworld", "{delta}"], 5),
}
VOLATILE = ("timings", "generation_s", "scoring_s", "total_s", "seconds", "minutes")


def locoedit(args: list[str], kill_after: float | None = None) -> bool:
    """Run the CLI; with ``kill_after``, SIGKILL it after that many seconds. True if it ran to the end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "locoedit", "--no-progress", *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, stderr = process.communicate(timeout=kill_after if kill_after is not None else 300)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.communicate()
        return False
    assert process.returncode == 0, stderr.decode()[-2000:]
    return True


def _stable(data):
    if isinstance(data, dict):
        return {k: _stable(v) for k, v in data.items() if k not in VOLATILE}
    if isinstance(data, list):
        return [_stable(v) for v in data]
    return data


def contents(folder: Path) -> dict[str, str]:
    """Every file's content (JSON without timings), by relative path."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".json":
                data = json.dumps(_stable(json.loads(data)), sort_keys=True).encode()
            found[str(path.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return found


def stray(folder: Path) -> list[str]:
    return [str(p) for p in folder.parent.rglob("*.tmp")]


@pytest.fixture(scope="module")
def delta(tmp_path_factory):
    path = tmp_path_factory.mktemp("delta") / "circle.safetensors"
    assert locoedit([*EDIT, "--out", str(path)])
    return path


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_killed_runs_resume_to_the_uninterrupted_result(command, delta, tmp_path):
    arguments, kills = COMMANDS[command]
    arguments = [a.format(delta=delta) for a in arguments]
    reference = tmp_path / "reference" / "out"
    started = time.perf_counter()
    assert locoedit([*arguments, "--out", str(reference)])
    duration = time.perf_counter() - started
    interrupted = tmp_path / "interrupted" / "out"
    rng = random.Random(f"{command}-kills")
    finished_early = 0
    for _ in range(kills):
        # Import takes most of the first seconds; the kills land anywhere from then to the end of a whole run.
        finished_early += locoedit([*arguments, "--out", str(interrupted)], kill_after=rng.uniform(0.4, 1.0) * duration)
    assert locoedit([*arguments, "--out", str(interrupted)])
    assert contents(interrupted) == contents(reference)
    assert stray(interrupted) == [] and stray(reference) == []
    assert finished_early < kills, "every kill came too late to interrupt anything"
