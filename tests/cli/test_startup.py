"""The command line starts without torch: `import locoedit.cli` (what `locoedit --help` runs) loads neither torch,
diffusers, transformers nor numpy. The timing lives in bench/cli_start.py."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "numpy", "PIL", "gradio")


@pytest.mark.parametrize("module", ["locoedit.cli", "locoedit.edit", "locoedit.models", "locoedit.delta"])
def test_importing_the_front_end_and_the_requests_loads_no_heavy_library(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "", f"import {module} loaded {result.stdout.strip()}"


def test_help_of_every_command_runs_without_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from locoedit.cli import app\n"
        "import typer\n"
        "names = list(typer.main.get_command(app).commands)\n"
        "runner = CliRunner()\n"
        "for name in [[]] + [[n] for n in names]:\n"
        "    result = runner.invoke(app, [*name, '--help'])\n"
        "    assert result.exit_code == 0, (name, result.output)\n"
        "print(len(names), 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    count, loaded = result.stdout.split()
    assert int(count) >= 17 and loaded == "False"
