"""Time the command line's start-up: ``locoedit --help`` and every ``locoedit CMD --help``, side by side with a bare
``python -c pass`` and with ``import torch`` (what every command paid before the CLI stopped importing it).

    python bench/cli_start.py [--repeats 5]

Each figure is a fresh process (``python -m locoedit ...`` from this checkout), run ``--repeats`` times, rounds
interleaved so that a busy machine slows every command alike; prints the minimum and median wall seconds, the
median's ratio to ``python -c pass``, and whether it meets the target of 0.5 s. Not a timed test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 0.5


def commands() -> list[str]:
    sys.path.insert(0, str(REPO))
    import typer

    from locoedit.cli import app

    return list(typer.main.get_command(app).commands)


def wall(argv: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    python = [sys.executable]
    cases = {"python -c pass": python + ["-c", "pass"], "python -c 'import torch'": python + ["-c", "import torch"]}
    cases["locoedit --help"] = python + ["-m", "locoedit", "--help"]
    cases |= {f"locoedit {name} --help": python + ["-m", "locoedit", *name.split(), "--help"] for name in commands()}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, argv in cases.items():
            times[name].append(wall(argv))
    base = statistics.median(times["python -c pass"])
    print(f"| command | min (s) | median (s) | median / python -c pass | under {TARGET_S} s |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        verdict = "" if not name.startswith("locoedit") else ("yes" if median < TARGET_S else "**no**")
        print(f"| `{name}` | {min(values):.3f} | {median:.3f} | {median / base:.1f} | {verdict} |")


if __name__ == "__main__":
    main()
