"""The code is formatted, lint-free and type-checks, as CI checks it (``.ci/run``): ``ruff format --check`` and
``ruff check`` on the package, tests and benchmarks, ``mypy`` on the package (configured in pyproject.toml).

Each tool runs in the repository root as a subprocess; a failure shows the tool's own output.
"""

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["locoedit", "tests", "bench"]

CHECKS = {
    "ruff format": ("ruff", ["format", "--check", *PATHS]),
    "ruff check": ("ruff", ["check", *PATHS]),
    "mypy": ("mypy", []),  # packages and options from [tool.mypy]
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CHECKS))
def test_clean(name):
    tool, args = CHECKS[name]
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed (pip install -e '.[lint]')")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, (
        f"{name} failed (exit {proc.returncode}, {seconds:.1f} s):\n{proc.stdout}\n{proc.stderr}"
    )
