"""The locoedit command line, with one process dying (like a SIGKILL) right after it records its n-th window.

LOCOEDIT_TEST_EXIT=RANK:N accelerate launch ... tests/distributed/exit_after_windows.py localize ...
"""

import os

from locoedit.localize.locogen import LocalizationFolder

rank, after = (int(part) for part in os.environ["LOCOEDIT_TEST_EXIT"].split(":"))
if int(os.environ.get("RANK", "0")) == rank:
    record = LocalizationFolder.record
    recorded = []

    def record_then_die(self, result, stage=""):
        record(self, result, stage)
        recorded.append(result.key)
        if len(recorded) == after:
            os._exit(9)

    LocalizationFolder.record = record_then_die

from locoedit.cli import app

app(prog_name="locoedit")
