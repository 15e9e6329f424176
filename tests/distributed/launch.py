"""Run the command line under `accelerate launch` with two CPU processes, as a user would."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# One thread per process (2 cores, shared); CPU processes even where CUDA exists; this checkout's locoedit.
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "ACCELERATE_USE_CPU": "1",
    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
}
# accelerate 1.15's `launch --cpu --num_processes 2` starts one process unless MPI is set up; --multi_gpu on a machine
# without CUDA starts them through torchrun, and locoedit's processes then meet on the CPU (gloo).
LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.accelerate_cli",
    "launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "--main_process_port",
    "0",
]


def launch(
    arguments: list[str], script: str | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``accelerate launch [-m locoedit | script] --no-progress ARGUMENTS`` on two CPU processes."""
    command = LAUNCH + ([script] if script else ["-m", "locoedit"])
    return subprocess.run(
        [*command, "--no-progress", *arguments],
        env={**ENV, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
