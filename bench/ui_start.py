"""Time the cold start of ``locoedit ui`` on the toy world: from launching the command to the first served page.

    python bench/ui_start.py [--repeats 3] [--port 7871]

Each repeat starts ``python -m locoedit ui --port PORT --runs TMP`` in a fresh process (one torch thread, as on the
2-core development machine next to other work), polls http://127.0.0.1:PORT/ until it answers 200, records the
seconds since launch, and stops the server. Prints each time and the worst. Not a timed test: the page must be served
within 15 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cold_start(port: int) -> float:
    with tempfile.TemporaryDirectory() as runs:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "locoedit", "ui", "--port", str(port), "--runs", runs],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as page:
                        if page.status == 200:
                            return time.perf_counter() - started
                except OSError:
                    if server.poll() is not None:
                        raise SystemExit(
                            f"locoedit ui exited with {server.returncode}: {server.stderr.read()}"
                        ) from None
                    time.sleep(0.05)
        finally:
            server.terminate()
            server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port", type=int, default=7871)
    args = parser.parse_args()
    times = []
    for repeat in range(args.repeats):
        times.append(cold_start(args.port))
        print(f"cold start {repeat + 1}: {times[-1]:.1f} s to the first served page")
    print(f"worst of {len(times)}: {max(times):.1f} s (limit 15 s on 2 cores)")


if __name__ == "__main__":
    main()
